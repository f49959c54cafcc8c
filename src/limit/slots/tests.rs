use super::*;
use std::collections::HashMap;

/// The `SLOTS` script's arithmetic, on a clock the test moves.
#[derive(Default)]
struct FakeRedis {
    now: u64,
    /// node → (slots, expires)
    held: HashMap<usize, (u64, u64)>,
    waiting: HashMap<usize, (u64, u64)>,
    spare: HashMap<usize, (u64, u64)>,
}

impl FakeRedis {
    fn live(map: &HashMap<usize, (u64, u64)>, now: u64, skip: usize) -> u64 {
        map.iter()
            .filter(|(n, (_, exp))| **n != skip && *exp > now)
            .map(|(_, (a, _))| a)
            .sum()
    }

    fn run(&mut self, node: usize, plan: &SlotPlan, ttl: u64) -> SlotAnswer {
        let others = Self::live(&self.held, self.now, node);
        let waiting = Self::live(&self.waiting, self.now, node);
        let spare = Self::live(&self.spare, self.now, node);
        let room = plan.limit as i64 - others as i64 - plan.held as i64;
        let grant = if room > 0 {
            plan.want.min(room as u64)
        } else {
            0
        };
        let mine = plan.held + grant;
        self.held.insert(node, (mine, self.now + ttl));
        self.spare
            .insert(node, (plan.spare + grant, self.now + ttl));
        if plan.want > grant {
            self.waiting
                .insert(node, (plan.want - grant, self.now + ttl));
        } else {
            self.waiting.remove(&node);
        }
        SlotAnswer {
            total: others + mine,
            grant,
            waiting,
            spare,
        }
    }

    /// Slots the fleet holds, as the next script would count them.
    fn total(&self) -> u64 {
        Self::live(&self.held, self.now, usize::MAX)
    }
}

/// A small deterministic generator, so that a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const TTL: u64 = 2_000;
const SYNC: u64 = 50;

fn sync(redis: &mut FakeRedis, node: usize, lease: &mut SlotLease, limit: u64, nodes: u64) {
    if let Some(plan) = lease.plan(limit, nodes, redis.now, TTL) {
        let answer = redis.run(node, &plan, TTL);
        lease.apply(&plan, &answer);
    }
}

/// Each of `clients` clients without a request in flight sends one (of one slot).
fn demand(lease: &mut SlotLease, clients: u64, limit: u64) {
    for _ in lease.active..clients {
        let _ = lease.admit(1, limit);
    }
}

#[test]
fn the_fleet_never_holds_or_uses_more_slots_than_the_limit() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let limit = 1 + rng.below(12);
        let nodes = 1 + rng.below(4) as usize;
        let mut redis = FakeRedis::default();
        let mut leases: Vec<SlotLease> = (0..nodes).map(|_| SlotLease::new("k".into())).collect();
        // Requests in flight: (node, cost).
        let mut flight: Vec<(usize, u64)> = Vec::new();
        for _ in 0..4_000 {
            redis.now += rng.below(5);
            let node = rng.below(nodes as u64) as usize;
            match rng.below(10) {
                0..=4 => {
                    let cost = 1 + rng.below(2).min(limit - 1);
                    let (v, _, _) = leases[node].admit(cost, limit);
                    if v.allowed {
                        flight.push((node, cost));
                    }
                }
                5..=7 if !flight.is_empty() => {
                    let (n, cost) = flight.swap_remove(rng.below(flight.len() as u64) as usize);
                    leases[n].end(cost);
                }
                _ => sync(&mut redis, node, &mut leases[node], limit, nodes as u64),
            }
            let in_use: u64 = flight.iter().map(|(_, c)| c).sum();
            assert!(
                in_use <= limit,
                "seed {seed}: {in_use} slots in use against a limit of {limit}"
            );
            assert!(
                redis.total() <= limit,
                "seed {seed}: Redis granted {} slots against a limit of {limit}",
                redis.total()
            );
            for (n, lease) in leases.iter().enumerate() {
                let using: u64 = flight.iter().filter(|(m, _)| *m == n).map(|(_, c)| c).sum();
                assert_eq!(
                    lease.active, using,
                    "seed {seed}: node {n} counts its slots"
                );
                assert!(
                    lease.active <= lease.held,
                    "seed {seed}: node {n} uses only slots it holds"
                );
            }
        }
    }
}

#[test]
fn a_crashed_nodes_slots_come_back_when_its_reservation_expires() {
    let mut redis = FakeRedis::default();
    let (mut a, mut b) = (SlotLease::new("k".into()), SlotLease::new("k".into()));
    for _ in 0..3 {
        demand(&mut a, 6, 6);
        sync(&mut redis, 0, &mut a, 6, 2);
    }
    demand(&mut a, 6, 6);
    assert_eq!(a.active, 6, "node a holds every slot");
    // Node a dies here: it never syncs again. Node b asks every sync.
    let died = redis.now;
    let mut admitted_at = None;
    for _ in 0..200 {
        redis.now += SYNC;
        if b.admit(1, 6).0.allowed {
            admitted_at = Some(redis.now);
            break;
        }
        sync(&mut redis, 1, &mut b, 6, 2);
    }
    let at = admitted_at.expect("node b gets a slot");
    assert!(
        at - died <= TTL + 2 * SYNC,
        "back {} ms after the crash, the bound is the reservation's {TTL} ms plus a sync",
        at - died
    );
}

#[test]
fn a_node_over_its_fair_share_gives_slots_back_to_nodes_that_wait() {
    let mut redis = FakeRedis::default();
    let (mut a, mut b) = (SlotLease::new("k".into()), SlotLease::new("k".into()));
    // Node a's six clients take all 6 first.
    for _ in 0..3 {
        demand(&mut a, 6, 6);
        sync(&mut redis, 0, &mut a, 6, 2);
    }
    demand(&mut a, 6, 6);
    assert_eq!(a.held, 6);
    // Node b's six clients keep asking; node a's requests end one a sync, and their
    // clients ask again at once.
    for _ in 0..40 {
        redis.now += SYNC;
        demand(&mut b, 6, 6);
        sync(&mut redis, 1, &mut b, 6, 2);
        if a.active > 0 {
            a.end(1);
        }
        demand(&mut a, 6, 6);
        sync(&mut redis, 0, &mut a, 6, 2);
        demand(&mut b, 6, 6);
        assert!(a.active + b.active <= 6);
    }
    assert_eq!(a.held, 3, "node a keeps its fair share");
    assert_eq!(b.active, 3, "node b uses the rest");
}

#[test]
fn a_quiet_key_hands_its_slots_back() {
    let mut redis = FakeRedis::default();
    let mut a = SlotLease::new("k".into());
    let _ = a.admit(4, 6);
    sync(&mut redis, 0, &mut a, 6, 3);
    assert!(a.admit(4, 6).0.allowed);
    a.end(4);
    for _ in 0..20 {
        redis.now += SYNC;
        sync(&mut redis, 0, &mut a, 6, 3);
    }
    assert_eq!(a.held, 0, "nothing in use, nothing asked: nothing kept");
    assert_eq!(redis.total(), 0, "and Redis counts nothing for it");
    for _ in 0..IDLE_SYNCS {
        sync(&mut redis, 0, &mut a, 6, 3);
    }
    assert!(a.is_idle());
}

#[test]
fn slots_admitted_without_redis_are_claimed_at_the_next_sync() {
    let mut redis = FakeRedis::default();
    let mut a = SlotLease::new("k".into());
    a.admitted_alone(2);
    sync(&mut redis, 0, &mut a, 6, 3);
    assert_eq!(a.held, 2);
    assert_eq!(redis.total(), 2, "the fleet counts them until they end");
}

#[test]
fn a_nodes_share_without_redis_rounds_up() {
    assert_eq!(fair_share(6, 3), 2);
    assert_eq!(fair_share(7, 3), 3);
    assert_eq!(fair_share(1, 3), 1);
    assert_eq!(fair_share(5, 0), 5);
}

#[test]
fn atomic_members_are_renewed_a_quarter_of_their_expiry_apart_and_idle_entries_go() {
    let mut a = SlotLease::new("k".into());
    a.members.push(("n:1".into(), 2));
    assert_eq!(
        a.renewal(1_000, TTL).map(|r| r.renew),
        Some(vec!["n:1:1".to_string(), "n:1:2".to_string()])
    );
    assert_eq!(a.renewal(1_000 + TTL / 4 - 1, TTL), None, "not yet");
    assert!(a.renewal(1_000 + TTL / 4, TTL).is_some());
    a.forget("n:1");
    assert!(!a.is_idle(), "idle only after a while");
    for i in 0..IDLE_SYNCS {
        assert_eq!(a.renewal(10_000 + u64::from(i), TTL), None);
    }
    assert!(a.is_idle());
}

#[test]
fn atomic_slots_admitted_without_redis_are_claimed_at_every_sync_until_redis_has_them() {
    let mut a = SlotLease::new("k".into());
    a.members.push(("n:1".into(), 1));
    assert!(a.renewal(1_000, TTL).is_some(), "the first renewal");
    a.admitted_alone_atomic("n:2".into(), 2);
    // Claims do not wait for the renewal to be due; the counted member is not renewed
    // before its time.
    let first = a.renewal(1_001, TTL).expect("a claim");
    assert_eq!(first.claim, vec!["n:2:1".to_string(), "n:2:2".to_string()]);
    assert!(first.renew.is_empty(), "{first:?}");
    // Redis did not answer: asked again next sync.
    let again = a.renewal(1_002, TTL).expect("claimed again");
    assert_eq!(again.claim, first.claim);
    a.renewed(&again, 2);
    assert_eq!(a.renewal(1_003, TTL), None, "claimed, and nothing is due");
    // Once claimed, it is renewed like the others.
    let due = a.renewal(1_000 + TTL / 4, TTL).expect("due");
    assert!(due.claim.is_empty());
    assert_eq!(due.renew.len(), 3, "{due:?}");
    // Redis lost one (a restart): every member in flight is claimed at the next sync.
    a.renewed(&due, 2);
    let reclaim = a.renewal(1_000 + TTL / 4 + 1, TTL).expect("a claim");
    assert_eq!(reclaim.claim.len(), 3, "{reclaim:?}");
    a.renewed(&reclaim, 3);
    // A request that ends before its claim is not claimed, nor released.
    a.admitted_alone_atomic("n:3".into(), 1);
    a.ended_alone("n:3", 1);
    assert_eq!(a.renewal(1_000 + TTL / 4 + 2, TTL), None);
    // One that ends after its claim is released by the next sync, again if that fails.
    a.ended_alone("n:2", 2);
    let release = a.renewal(1_000 + TTL / 4 + 3, TTL).expect("a release");
    assert_eq!(
        release.release,
        vec!["n:2:1".to_string(), "n:2:2".to_string()]
    );
    a.restore_renewal(release.clone());
    let again = a.renewal(1_000 + TTL / 4 + 4, TTL).expect("released again");
    assert_eq!(again.release, release.release);
    a.renewed(&again, 1);
    a.forget("n:1");
    for i in 0..IDLE_SYNCS {
        assert_eq!(a.renewal(20_000 + u64::from(i), TTL), None);
    }
    assert!(a.is_idle());
}

#[test]
fn a_spare_slot_moves_to_a_node_that_waits_within_a_few_syncs() {
    let mut redis = FakeRedis::default();
    let (mut a, mut b) = (SlotLease::new("k".into()), SlotLease::new("k".into()));
    // Node a asked for 2 (two requests came while it waited for its grant), uses 1.
    let _ = a.admit(1, 2);
    let _ = a.admit(1, 2);
    sync(&mut redis, 0, &mut a, 2, 3);
    assert!(a.admit(1, 2).0.allowed);
    assert_eq!((a.held, a.active), (2, 1));
    demand(&mut b, 1, 2);
    sync(&mut redis, 1, &mut b, 2, 3);
    let (v, _, pending) = b.admit(1, 2);
    assert!(!v.allowed);
    assert_eq!(
        pending,
        Some(true),
        "node b waits: node a holds a spare slot"
    );
    let mut syncs = 0;
    while !b.admit(1, 2).0.allowed {
        syncs += 1;
        assert!(syncs <= 4, "the spare slot should move within a few syncs");
        redis.now += SYNC;
        sync(&mut redis, 0, &mut a, 2, 3);
        sync(&mut redis, 1, &mut b, 2, 3);
    }
    assert_eq!(a.held + b.held, 2);
}

#[test]
fn a_grant_is_kept_for_the_request_still_waiting_for_it() {
    let mut redis = FakeRedis::default();
    let mut a = SlotLease::new("k".into());
    let (_, _, pending) = a.admit_counted(1, 2, true);
    assert_eq!(pending, Some(true), "the request waits for a grant");
    let plan = a.plan(2, 3, redis.now, TTL).expect("asks for a slot");
    // The request tries again while the round is under way, and wakes the sync task.
    let (v, urgent, _) = a.admit_counted(1, 2, false);
    assert!(!v.allowed && urgent);
    let answer = redis.run(0, &plan, TTL);
    a.apply(&plan, &answer);
    assert_eq!(a.held, 1);
    // The early round its retry asked for must not hand the slot back.
    sync(&mut redis, 0, &mut a, 2, 3);
    assert_eq!(a.held, 1, "the slot waits for its request");
    assert!(a.admit_counted(1, 2, false).0.allowed);
}

#[test]
fn a_fleet_over_its_limit_after_claims_admits_nothing_spare_beyond_it() {
    // Redis came back and nodes claimed what they admitted without it: the fleet holds 8
    // of 6. This node holds 4, none in use: only 4 - 2 may be used until the fleet is back
    // under, and its next sync keeps only what is in use.
    let mut a = SlotLease::new("k".into());
    a.held = 4;
    a.synced = true;
    a.known_total = 8;
    assert!(a.admit(1, 6).0.allowed);
    assert!(a.admit(1, 6).0.allowed);
    assert!(
        !a.admit(1, 6).0.allowed,
        "2 in use, 2 over the limit: 4 held"
    );
    let plan = a.plan(6, 3, 1_000, TTL).expect("hands spare slots back");
    assert_eq!(plan.held, 2, "{plan:?}");
    assert_eq!(plan.spare, 0, "{plan:?}");
}
