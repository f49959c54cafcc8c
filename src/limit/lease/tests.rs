use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

const W: u64 = 1_000;
const SYNC: u64 = 50;

/// The epoch window of `now`.
fn ep(now: u64) -> Span {
    Span::epoch(now, W)
}

/// The window script (`scripts::WINDOW`, async mode) as plain Rust: `used` and one
/// reservation per node per window, granting only what fits beside both.
#[derive(Default)]
struct Redis {
    windows: HashMap<u64, Counts>,
    sliding: bool,
}

#[derive(Default)]
struct Counts {
    used: u64,
    reserved: HashMap<usize, u64>,
}

impl Counts {
    fn total(&self) -> u64 {
        self.used + self.reserved.values().sum::<u64>()
    }
}

impl Redis {
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        node: usize,
        window: u64,
        delta: i64,
        held: u64,
        want: u64,
        limit: u64,
        elapsed: u64,
    ) -> (u64, u64, u64, u64) {
        let prev = if self.sliding {
            self.windows.get(&(window - 1)).map_or(0, Counts::total)
        } else {
            0
        };
        let weighted = (prev * (W - elapsed)).div_ceil(W);
        let counts = self.windows.entry(window).or_default();
        counts.used = (counts.used as i64 + delta).max(0) as u64;
        let others: u64 = counts
            .reserved
            .iter()
            .filter(|(n, _)| **n != node)
            .map(|(_, r)| *r)
            .sum();
        let room = limit as i64 - weighted as i64 - (counts.used + others + held) as i64;
        let grant = if room > 0 { want.min(room as u64) } else { 0 };
        let mine = held + grant;
        if mine > 0 {
            counts.reserved.insert(node, mine);
        } else {
            counts.reserved.remove(&node);
        }
        (counts.used + others + mine, grant, prev, counts.used)
    }

    fn answer(&mut self, node: usize, plan: &WindowPlan, limit: u64, now: u64) -> WindowAnswer {
        for (window, report) in &plan.stale {
            self.run(node, *window, report.net_delta(), 0, 0, limit, 0);
        }
        let (total, grant, prev, used) = self.run(
            node,
            plan.window,
            plan.report.net_delta(),
            plan.held,
            plan.want,
            limit,
            now % W,
        );
        let next = plan.prefetch.map(|want| {
            let (total, granted, prev, _) = self.run(node, plan.window + 1, 0, 0, want, limit, 0);
            Prefetch {
                window: plan.window + 1,
                granted,
                total,
                prev,
            }
        });
        WindowAnswer {
            total,
            grant,
            prev,
            used,
            next,
        }
    }

    fn total(&self, window: u64) -> u64 {
        self.windows.get(&window).map_or(0, Counts::total)
    }
}

/// Syncs one lease at once (plan, script, answer), as an urgent round does.
fn sync(lease: &mut Lease, redis: &mut Redis, node: usize, limit: u64, now: u64, nodes: u64) {
    let sliding = redis.sliding;
    if let Some(plan) = lease.plan_window(limit, now, ep(now), sliding, nodes, SYNC) {
        let answer = redis.answer(node, &plan, limit, now);
        let _ = lease.apply_window(&plan, &answer);
    }
}

/// One request as the proxy makes it: decided at once, or after waiting for the grant the
/// lease asked for (one urgent round).
fn request(
    lease: &mut Lease,
    redis: &mut Redis,
    node: usize,
    limit: u64,
    now: u64,
    nodes: u64,
) -> bool {
    let sliding = redis.sliding;
    let v = lease.admit_window(1, limit, now, ep(now), sliding, nodes, SYNC);
    if v.allowed || lease.exhausted {
        return v.allowed;
    }
    sync(lease, redis, node, limit, now, nodes);
    lease
        .admit_window(1, limit, now, ep(now), sliding, nodes, SYNC)
        .allowed
}

#[test]
fn a_new_key_waits_for_its_first_grant_when_the_limit_is_small() {
    let (limit, nodes) = (5, 3);
    let mut lease = Lease::new("k".into(), 0);
    let now = 10 * W;
    let v = lease.admit_window(1, limit, now, ep(now), false, nodes, SYNC);
    assert!(!v.allowed, "nothing is admitted before Redis grants it");
    assert!(!lease.exhausted, "the grant is on its way");
    assert!(lease.urgent, "a new key asks for a sync at once");
    let mut redis = Redis::default();
    sync(&mut lease, &mut redis, 0, limit, now, nodes);
    assert!(lease.granted >= 1);
    assert!(
        lease
            .admit_window(1, limit, now, ep(now), false, nodes, SYNC)
            .allowed
    );
}

#[test]
fn a_large_limit_admits_a_hundredth_of_its_share_before_the_first_grant() {
    let (limit, nodes) = (10_000, 2);
    assert_eq!(unbacked_allowance(limit, nodes), 50);
    assert_eq!(unbacked_allowance(199, 2), 0, "under 100 per node: none");
    let mut lease = Lease::new("k".into(), 0);
    let now = 10 * W;
    let admitted = (0..60)
        .filter(|_| {
            lease
                .admit_window(1, limit, now, ep(now), false, nodes, SYNC)
                .allowed
        })
        .count();
    assert_eq!(admitted, 50);
    assert!(!lease.exhausted, "the rest waits for the grant");
    let mut redis = Redis::default();
    sync(&mut lease, &mut redis, 0, limit, now + 1, nodes);
    assert_eq!(
        redis.windows[&10].used, 50,
        "the unbacked units were reported"
    );
    assert!(
        lease
            .admit_window(1, limit, now + 1, ep(now + 1), false, nodes, SYNC)
            .allowed
    );
}

/// Drives `nodes` leases against one model Redis with random interleavings of requests,
/// plans sent, answers arriving (or failing), and time. Returns what each window admitted.
fn interleave(seed: u64, limit: u64, nodes: usize, sliding: bool) -> (Redis, Vec<(u64, u64)>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut redis = Redis {
        sliding,
        ..Redis::default()
    };
    let start = 100 * W;
    let mut leases: Vec<Lease> = (0..nodes)
        .map(|_| Lease::new("k".into(), start / W))
        .collect();
    let mut in_flight: Vec<Option<WindowPlan>> = vec![None; nodes];
    // (time, window, cost) of every admission, and per node the ones it may hand back
    // (index into `admitted`, backed).
    let mut admitted = Vec::new();
    let mut receipts: Vec<Vec<(usize, bool)>> = vec![Vec::new(); nodes];
    let mut now = start;
    let live = nodes as u64;
    while now < start + 3 * W {
        let node = rng.gen_range(0..nodes);
        match rng.gen_range(0..11) {
            0..=4 => {
                let cost = rng.gen_range(1..=2).min(limit);
                let lease = &mut leases[node];
                if lease
                    .admit_window(cost, limit, now, ep(now), sliding, live, SYNC)
                    .allowed
                {
                    receipts[node].push((admitted.len(), lease.last_backed));
                    admitted.push((now, now / W, cost));
                }
            }
            10 => {
                // Another policy refused the request after this one admitted it.
                if let Some((index, backed)) = receipts[node].pop() {
                    let (_, window, cost) = admitted[index];
                    leases[node].refund(Some(window), cost, backed);
                    admitted[index].2 = 0;
                }
            }
            5 | 6 => {
                if in_flight[node].is_none() {
                    in_flight[node] =
                        leases[node].plan_window(limit, now, ep(now), sliding, live, SYNC);
                }
            }
            7 | 8 => {
                if let Some(plan) = in_flight[node].take() {
                    let answer = redis.answer(node, &plan, limit, now);
                    let _ = leases[node].apply_window(&plan, &answer);
                }
            }
            _ => {
                if let Some(plan) = in_flight[node].take() {
                    leases[node].restore_window(plan);
                }
            }
        }
        for window in now / W - 1..=now / W + 1 {
            let used = redis.windows.get(&window).map_or(0, |c| c.used);
            assert!(
                redis.total(window) <= limit.max(used),
                "seed {seed}: Redis reserved past the limit {limit} in window {window}: used {used}, reserved {:?}",
                redis.windows.get(&window).map(|c| c.reserved.clone())
            );
        }
        now += rng.gen_range(0..8);
    }
    let mut per_window: HashMap<u64, u64> = HashMap::new();
    for (_, window, cost) in &admitted {
        *per_window.entry(*window).or_default() += cost;
    }
    let mut counts: Vec<(u64, u64)> = per_window.into_iter().collect();
    counts.sort_unstable();
    if sliding {
        // At every admission, the sliding estimate with the final previous count holds.
        for (at, window, _) in &admitted {
            let current: u64 = admitted
                .iter()
                .filter(|(t, w, _)| w == window && t <= at)
                .map(|(_, _, c)| c)
                .sum();
            let previous: u64 = admitted
                .iter()
                .filter(|(_, w, _)| *w + 1 == *window)
                .map(|(_, _, c)| c)
                .sum();
            let weighted = (previous * (W - at % W)).div_ceil(W);
            let slack = live * unbacked_allowance(limit, live);
            assert!(
                current + weighted <= limit + slack,
                "seed {seed}: sliding estimate {current} + {weighted} over {limit} at {at}"
            );
        }
    }
    (redis, counts)
}

#[test]
fn interleaved_nodes_never_admit_more_than_small_limits() {
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let limit = rng.gen_range(1..=30);
        let nodes = rng.gen_range(2..=5);
        let sliding = seed % 2 == 1;
        let (_, counts) = interleave(seed, limit, nodes, sliding);
        for (window, count) in counts {
            assert!(
                count <= limit,
                "seed {seed}: window {window} admitted {count} of {limit} on {nodes} nodes"
            );
        }
    }
}

#[test]
fn interleaved_nodes_stay_within_one_percent_of_large_limits() {
    for seed in 0..60 {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xb16);
        let nodes = rng.gen_range(2..=5);
        let limit = rng.gen_range(100 * nodes as u64..=3_000);
        let (_, counts) = interleave(seed, limit, nodes, seed % 2 == 1);
        let bound = limit + limit / 100;
        for (window, count) in counts {
            assert!(
                count <= bound,
                "seed {seed}: window {window} admitted {count} of {limit} on {nodes} nodes"
            );
        }
    }
}

#[test]
fn a_client_pinned_to_one_node_gets_the_whole_limit() {
    for limit in [1, 5, 10, 37] {
        let nodes = 3;
        let mut redis = Redis::default();
        let mut lease = Lease::new("k".into(), 0);
        let start = 20 * W;
        let admitted = (0..2 * limit)
            .filter(|i| request(&mut lease, &mut redis, 0, limit, start + i, nodes))
            .count() as u64;
        assert_eq!(admitted, limit, "limit {limit}");
    }
}

#[test]
fn a_client_spread_over_the_fleet_gets_at_least_the_limit_less_one() {
    for nodes in [2u64, 3, 5] {
        for limit in [5, 6, 10, 31] {
            for sliding in [false, true] {
                let mut redis = Redis {
                    sliding,
                    ..Redis::default()
                };
                let mut leases: Vec<Lease> =
                    (0..nodes).map(|_| Lease::new("k".into(), 0)).collect();
                let start = 40 * W;
                let mut admitted = 0;
                for i in 0..3 * limit {
                    let node = (i % nodes) as usize;
                    let now = start + i * 2;
                    if request(&mut leases[node], &mut redis, node, limit, now, nodes) {
                        admitted += 1;
                    }
                    // Every node's scheduled sync runs now and then.
                    if i % 5 == 4 {
                        for (n, lease) in leases.iter_mut().enumerate() {
                            sync(lease, &mut redis, n, limit, now, nodes);
                        }
                    }
                }
                assert!(
                    admitted <= limit && admitted + 1 >= limit,
                    "{nodes} nodes, limit {limit}, sliding {sliding}: admitted {admitted}"
                );
            }
        }
    }
}

#[test]
fn quota_an_idle_node_holds_goes_back_to_the_fleet() {
    let (limit, nodes) = (6, 2);
    let mut redis = Redis::default();
    let mut a = Lease::new("k".into(), 0);
    let mut b = Lease::new("k".into(), 0);
    let now = 30 * W;
    assert!(request(&mut a, &mut redis, 0, limit, now, nodes));
    assert!(a.held() > 0, "a holds more than it spent");
    // The client moves to b; a goes quiet and hands its quota back within a few syncs,
    // which b's scheduled syncs pick up.
    let mut got = 1;
    for step in 0..(2 * limit) {
        let at = now + 1 + step * SYNC;
        sync(&mut a, &mut redis, 0, limit, at, nodes);
        sync(&mut b, &mut redis, 1, limit, at, nodes);
        if request(&mut b, &mut redis, 1, limit, at, nodes) {
            got += 1;
        }
    }
    assert_eq!(got, limit);
}

#[test]
fn admissions_during_a_sync_are_covered_by_its_grant() {
    // A large limit, so that admissions while the answer is on its way are unbacked.
    let (limit, nodes) = (500, 1);
    let mut lease = Lease::new("k".into(), 0);
    let now = 3 * W;
    assert!(
        lease
            .admit_window(1, limit, now, ep(now), false, nodes, SYNC)
            .allowed
    );
    let plan = lease
        .plan_window(limit, now, ep(now), false, nodes, SYNC)
        .unwrap();
    assert!(
        lease
            .admit_window(1, limit, now, ep(now), false, nodes, SYNC)
            .allowed
    );
    let mut redis = Redis::default();
    let answer = redis.answer(0, &plan, limit, now);
    let _ = lease.apply_window(&plan, &answer);
    let mut more = 0;
    while request(&mut lease, &mut redis, 0, limit, now, nodes) {
        more += 1;
    }
    assert_eq!(2 + more, limit, "exactly the limit");
    sync(&mut lease, &mut redis, 0, limit, now + 1, nodes);
    let counts = &redis.windows[&3];
    assert_eq!(
        (counts.used, counts.total()),
        (limit, limit),
        "all reported"
    );
}

#[test]
fn a_sliding_window_weighs_the_fleets_previous_count() {
    // Three nodes filled a 300 sliding window; this one took a third of it. The next
    // window may grant only what the previous one's weight leaves.
    let (limit, nodes) = (300, 3);
    let mut redis = Redis {
        sliding: true,
        ..Redis::default()
    };
    let mut lease = Lease::new("k".into(), 3);
    let now = 3 * W + 900;
    sync_until_granted(&mut lease, &mut redis, 0, limit, now, nodes);
    let mut admitted = 0;
    while request(&mut lease, &mut redis, 0, limit, now, nodes) && admitted < 100 {
        admitted += 1;
    }
    // The other two nodes spend the rest.
    redis.windows.entry(3).or_default().used += limit - admitted;
    sync(&mut lease, &mut redis, 0, limit, now + 1, nodes);
    let start = 4 * W + 1;
    let admitted = (0..100)
        .filter(|_| request(&mut lease, &mut redis, 0, limit, start, nodes))
        .count();
    assert!(
        admitted <= 1,
        "{admitted} admitted at the start of a window the fleet just filled"
    );
}

fn sync_until_granted(
    lease: &mut Lease,
    redis: &mut Redis,
    node: usize,
    limit: u64,
    now: u64,
    nodes: u64,
) {
    lease.admit_window(1, limit, now, ep(now), redis.sliding, nodes, SYNC);
    sync(lease, redis, node, limit, now, nodes);
    assert!(lease.held() > 0);
}

#[test]
fn a_key_that_went_quiet_starts_over_from_what_its_window_has_left() {
    let (limit, nodes) = (4, 1);
    let mut lease = Lease::new("k".into(), 0);
    let mut redis = Redis::default();
    let now = 7 * W;
    for _ in 0..3 {
        assert!(request(&mut lease, &mut redis, 0, limit, now, nodes));
    }
    let mut at = now;
    for _ in 0..10 {
        at += SYNC;
        sync(&mut lease, &mut redis, 0, limit, at, nodes);
    }
    let counts = &redis.windows[&7];
    assert_eq!(
        (counts.used, counts.total()),
        (3, 3),
        "reported, handed back"
    );
    let admitted = (0..4)
        .filter(|_| request(&mut lease, &mut redis, 0, limit, at + 1, nodes))
        .count();
    assert_eq!(admitted, 1, "one unit was left in the window");
}

#[test]
fn a_failed_sync_keeps_the_report() {
    let mut lease = Lease::new("k".into(), 0);
    let mut redis = Redis::default();
    assert!(request(&mut lease, &mut redis, 0, 100, 5 * W, 1));
    lease.admit_window(1, 100, 5 * W, ep(5 * W), false, 1, SYNC);
    let before = (lease.unreported, lease.reserved, lease.held());
    let plan = lease
        .plan_window(100, 5 * W + 1, ep(5 * W + 1), false, 1, SYNC)
        .unwrap();
    assert_eq!(lease.unreported, 0);
    lease.restore_window(plan);
    assert_eq!((lease.unreported, lease.reserved, lease.held()), before);
}

#[test]
fn a_failed_release_can_still_be_spent_and_is_released_again() {
    let mut lease = Lease::new("k".into(), 7);
    lease.synced = true;
    lease.granted = 10;
    lease.reserved = 10;
    let now = 7 * W + 10;
    let mut released = None;
    for step in 0..QUIET_RELEASE_SYNCS as u64 + 2 {
        if let Some(plan) = lease.plan_window(100, now + step, ep(now + step), false, 2, SYNC) {
            if plan.report.released > 0 {
                released = Some(plan);
                break;
            }
            lease.restore_window(plan);
        }
    }
    let plan = released.expect("a quiet key releases its reservation");
    assert_eq!(lease.held(), 0);
    lease.restore_window(plan);
    assert_eq!((lease.held(), lease.reserved), (10, 10));
    let again = lease
        .plan_window(100, now + 20, ep(now + 20), false, 2, SYNC)
        .unwrap();
    assert_eq!(again.report.released, 10);
}

#[test]
fn an_ended_window_reports_its_tail_and_returns_unspent_quota() {
    let mut lease = Lease::new("k".into(), 5);
    lease.granted = 10;
    lease.reserved = 9;
    lease.used = 4;
    lease.unreported = 3;
    lease.synced = true;
    lease.roll(6);
    // 3 admitted since the last report, spent from the reservation; 6 unspent back.
    assert_eq!(
        lease.sync.stale,
        vec![(
            5,
            Report {
                delta: 3,
                provisional: 0,
                spent: 3,
                released: 6,
                refund: 0,
            }
        )]
    );
    assert_eq!((lease.used, lease.unreported, lease.reserved), (0, 0, 0));
}

#[test]
fn prefetch_fills_the_next_fixed_window_only() {
    for sliding in [false, true] {
        let mut redis = Redis {
            sliding,
            ..Redis::default()
        };
        let mut lease = Lease::new("k".into(), 5);
        let near_end = 5 * W + 940;
        assert!(request(&mut lease, &mut redis, 0, 50, near_end, 1));
        lease.admit_window(1, 50, near_end + 5, ep(near_end + 5), sliding, 1, SYNC);
        let plan = lease
            .plan_window(50, near_end + 10, ep(near_end + 10), sliding, 1, SYNC)
            .unwrap();
        let answer = redis.answer(0, &plan, 50, near_end + 10);
        let _ = lease.apply_window(&plan, &answer);
        assert_eq!(lease.sync.next.is_some(), !sliding, "sliding {sliding}");
        let v = lease.admit_window(1, 50, 6 * W + 1, ep(6 * W + 1), sliding, 1, SYNC);
        assert_eq!(v.allowed, !sliding, "sliding {sliding}");
        assert_eq!(lease.synced, !sliding, "a prefetch counts as a sync");
    }
}

#[test]
fn alone_a_node_continues_from_what_redis_last_said() {
    let nodes = 2;
    // Redis said the window was full: nothing more, whatever this node's own count.
    let mut full = Lease::new("k".into(), 4);
    full.synced = true;
    full.known_total = 30;
    full.known_used = 30;
    let now = 4 * W + 10;
    let admitted = (0..20)
        .filter(|_| full.admit_alone(1, 30, nodes, now, ep(now), false).allowed)
        .count();
    assert_eq!(admitted, 0);
    // Half of it left: this node holds 2, and takes half of the 15 left beside them.
    let mut half = Lease::new("k".into(), 4);
    half.synced = true;
    half.known_total = 15;
    half.known_used = 13;
    half.granted = 2;
    half.reserved = 2;
    let admitted = (0..20)
        .filter(|_| half.admit_alone(1, 30, nodes, now, ep(now), false).allowed)
        .count();
    assert_eq!(admitted, 2 + 8);
    assert_eq!(half.unreported, 10, "reported when Redis is back");
    // A window Redis never answered for: a share of the whole limit.
    let mut fresh = Lease::new("k".into(), 4);
    let admitted = (0..20)
        .filter(|_| fresh.admit_alone(1, 30, nodes, now, ep(now), false).allowed)
        .count();
    assert_eq!(admitted, 15);
}

#[test]
fn atomic_mode_falls_back_from_its_last_answer_and_reports_what_it_admitted() {
    let mut lease = Lease::new("k".into(), 8);
    lease.record_exact_window(8, 95, 0);
    let now = 8 * W + 500;
    let admitted = (0..20)
        .filter(|_| lease.admit_alone(1, 100, 3, now, ep(now), false).allowed)
        .count();
    assert_eq!(admitted, 2, "a third of the 5 left, rounded up");
    assert_eq!(lease.take_exact_window_delta(8), 2);
    lease.restore_exact_delta(Some(8), 2);
    assert_eq!(
        lease.take_exact_window_delta(9),
        0,
        "another window owes nothing"
    );
    assert_eq!(lease.take_exact_window_delta(8), 2);
}

/// The bucket script (`scripts::BUCKET`, async mode) as plain Rust, in µs.
struct RedisBucket {
    tat: u64,
    reserved: HashMap<usize, u64>,
    t: u64,
    burst: u64,
}

impl RedisBucket {
    fn answer(&mut self, node: usize, plan: &BucketPlan, now_us: u64) -> BucketAnswer {
        let tau = self.t * self.burst;
        let others: u64 = self
            .reserved
            .iter()
            .filter(|(n, _)| **n != node)
            .map(|(_, r)| *r)
            .sum();
        let charged = self.tat.max(now_us) as i64 + plan.report.net_delta() * self.t as i64;
        self.tat = (charged.max(now_us as i64)) as u64;
        let content = (now_us + tau).saturating_sub(self.tat) / self.t;
        let room = content as i64 - (others + plan.held) as i64;
        let grant = if room > 0 {
            plan.want.min(room as u64)
        } else {
            0
        };
        let mine = plan.held + grant;
        self.reserved.insert(node, mine);
        BucketAnswer {
            grant,
            tokens: (room - grant as i64).max(0) as u64,
            ms_per_token: self.t.div_ceil(1_000),
        }
    }
}

#[test]
fn interleaved_nodes_never_spend_more_than_a_bucket_allows() {
    for seed in 0..200 {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xb0c);
        let nodes = rng.gen_range(2..=4usize);
        let burst = rng.gen_range(1..=12u64);
        let t = rng.gen_range(5..=60u64) * 1_000; // µs per token
        let mut redis = RedisBucket {
            tat: 0,
            reserved: HashMap::new(),
            t,
            burst,
        };
        let mut leases: Vec<Lease> = (0..nodes).map(|_| Lease::new("k".into(), 0)).collect();
        let mut in_flight: Vec<Option<BucketPlan>> = vec![None; nodes];
        let mut spent: Vec<u64> = Vec::new(); // µs of each admitted unit
        let mut now_us = 1_000_000u64;
        for _ in 0..2_000 {
            let node = rng.gen_range(0..nodes);
            match rng.gen_range(0..10) {
                0..=4 => {
                    let lease = &mut leases[node];
                    if lease.admit_bucket(1, burst, nodes as u64, SYNC).allowed {
                        if rng.gen_range(0..4) == 0 {
                            // Another policy of the route refused the request.
                            let backed = lease.last_backed;
                            lease.refund(None, 1, backed);
                        } else {
                            spent.push(now_us);
                        }
                    }
                }
                5 | 6 => {
                    if in_flight[node].is_none() {
                        in_flight[node] =
                            leases[node].plan_bucket(burst, nodes as u64, now_us / 1_000, SYNC);
                    }
                }
                7 | 8 => {
                    if let Some(plan) = in_flight[node].take() {
                        let answer = redis.answer(node, &plan, now_us);
                        let _ = leases[node].apply_bucket(&plan, &answer, now_us * 1_000);
                    }
                }
                _ => {
                    if let Some(plan) = in_flight[node].take() {
                        leases[node].restore_bucket(plan);
                    }
                }
            }
            now_us += rng.gen_range(0..3_000);
        }
        // GCRA's promise over every span: at most the burst plus what refilled during it.
        for (i, from) in spent.iter().enumerate() {
            for (j, to) in spent.iter().enumerate().skip(i) {
                let count = (j - i + 1) as u64;
                let refilled = (to - from) / t;
                assert!(
                    count <= burst + refilled,
                    "seed {seed}: {count} units in {} µs, burst {burst}, {t} µs per token",
                    to - from
                );
            }
        }
        assert!(!spent.is_empty(), "seed {seed}: nothing admitted");
    }
}

#[test]
fn a_bucket_key_waits_for_its_tokens_then_spends_them() {
    let mut lease = Lease::new("k".into(), 0);
    let v = lease.admit_bucket(1, 6, 3, SYNC);
    assert!(!v.allowed && !lease.exhausted, "waits for the first tokens");
    let plan = lease.plan_bucket(6, 3, 0, SYNC).unwrap();
    assert_eq!(
        plan.want, 2,
        "two syncs' worth of demand, within a third of the burst"
    );
    let _ = lease.apply_bucket(
        &plan,
        &BucketAnswer {
            grant: 2,
            tokens: 4,
            ms_per_token: 100,
        },
        0,
    );
    assert!(lease.admit_bucket(1, 6, 3, SYNC).allowed);
    assert!(lease.admit_bucket(1, 6, 3, SYNC).allowed);
    let v = lease.admit_bucket(1, 6, 3, SYNC);
    assert!(!v.allowed);
    let plan = lease.plan_bucket(6, 3, SYNC, SYNC).unwrap();
    assert_eq!(
        (plan.report.delta, plan.report.spent, plan.held),
        (2, 2, 0),
        "both spent from the reservation"
    );
}

#[test]
fn alone_a_bucket_continues_from_the_tokens_redis_last_reported() {
    let bucket = Bucket {
        count: 10,
        per_ns: 1_000_000_000,
        burst: 10,
    };
    let now = 5_000_000_000u64;
    let mut empty = Lease::new("k".into(), 0);
    empty.record_exact_bucket(0, 100, now);
    assert!(
        !empty.admit_bucket_alone(1, bucket, 2, now).allowed,
        "an empty bucket stays empty"
    );
    // Half a second later, 5 tokens have come back to the fleet: this node's half of the
    // rate refilled 2.5 of them.
    let later = now + 500_000_000;
    let admitted = (0..10)
        .filter(|_| empty.admit_bucket_alone(1, bucket, 2, later).allowed)
        .count();
    assert_eq!(admitted, 2);
    // A node that had not decided alone yet starts from its share of the refilled tokens.
    let mut known = Lease::new("k".into(), 0);
    known.record_exact_bucket(0, 100, now);
    let admitted = (0..10)
        .filter(|_| known.admit_bucket_alone(1, bucket, 2, later).allowed)
        .count();
    assert_eq!(admitted, 3, "half of 5, rounded up");
    let mut fresh = Lease::new("k".into(), 0);
    let admitted = (0..10)
        .filter(|_| fresh.admit_bucket_alone(1, bucket, 2, now).allowed)
        .count();
    assert_eq!(admitted, 5, "never heard of: half the burst");
}

#[test]
fn a_calendar_month_lease_holds_only_recent_demand_and_rolls_at_the_real_end() {
    // February (28 days) then March (31), as calendar spans with consecutive ids.
    const DAY: u64 = 86_400_000;
    let feb = Span {
        id: 685,
        start_ms: 1_000 * DAY,
        end_ms: 1_028 * DAY,
    };
    let mar = Span {
        id: 686,
        start_ms: feb.end_ms,
        end_ms: feb.end_ms + 31 * DAY,
    };
    let limit = 1_000_000;
    let mut lease = Lease::new("k".into(), feb.id);
    let mut redis = Redis::default();
    let mut now = feb.end_ms - 60_000;
    // A client at 5 requests per sync for a while.
    for _ in 0..20 {
        for _ in 0..5 {
            let v = lease.admit_window(1, limit, now, feb, false, 3, SYNC);
            if !v.allowed {
                assert!(!lease.exhausted);
            }
            assert_eq!(
                v.reset_ms,
                feb.end_ms - now,
                "counts to the end of February"
            );
        }
        if let Some(plan) = lease.plan_window(limit, now, feb, false, 3, SYNC) {
            assert!(
                plan.want <= 10,
                "a month's lease asks for recent demand, not {}",
                plan.want
            );
            let answer = redis.answer(0, &plan, limit, 0);
            let _ = lease.apply_window(&plan, &answer);
        }
        now += SYNC;
    }
    assert!(
        lease.reserved <= 10,
        "holds {} of a million",
        lease.reserved
    );
    assert!(lease.used >= 90, "{} admitted", lease.used);
    // At March's first instant the lease moves on and owes February its tail.
    let v = lease.admit_window(1, limit, mar.start_ms, mar, false, 3, SYNC);
    assert_eq!(lease.window, mar.id);
    assert_eq!(v.reset_ms, 31 * DAY);
    assert!(lease.sync.stale.iter().any(|(w, _)| *w == feb.id));
}

#[test]
fn numbers_that_shrink_hand_back_what_was_granted_under_the_old_ones() {
    let (nodes, now) = (2, 10 * W);
    let mut redis = Redis::default();
    let mut lease = Lease::new("k".into(), 0);
    // Busy under 10: the node holds quota beyond what it spent.
    for _ in 0..3 {
        assert!(request(&mut lease, &mut redis, 0, 10, now, nodes));
        sync(&mut lease, &mut redis, 0, 10, now, nodes);
    }
    assert!(lease.held() > 0, "holds quota: {lease:?}");
    assert!(redis.total(10) > 3, "Redis counts the reservation");

    // Down to 4: the next sync returns the reservation, and the node takes again only what
    // fits under 4 beside what it spent (3): one more.
    lease.renumbered(true, 4);
    assert_eq!(lease.held(), 0, "nothing granted under 10 is spent under 4");
    sync(&mut lease, &mut redis, 0, 4, now, nodes);
    assert_eq!(redis.total(10), redis.windows[&10].used + lease.reserved);
    let admitted = (0..5)
        .filter(|_| request(&mut lease, &mut redis, 0, 4, now, nodes))
        .count();
    assert_eq!(admitted, 1, "{lease:?}");
    sync(&mut lease, &mut redis, 0, 4, now, nodes);
    assert_eq!(redis.windows[&10].used, 4);

    // Up to 6: no longer spent; two more.
    lease.renumbered(false, 6);
    let admitted = (0..5)
        .filter(|_| request(&mut lease, &mut redis, 0, 6, now, nodes))
        .count();
    assert_eq!(admitted, 2, "{lease:?}");
}

/// A sync under way when the numbers change answers for the old ones: its short grant must
/// not mark the key spent under the new ones, or a raised limit stays refused until the
/// window ends (seen as a runtime policy raised from 3 to 5 admitting nothing more).
#[test]
fn an_answer_planned_under_the_old_numbers_does_not_spend_the_new_ones() {
    let (nodes, now) = (1, 10 * W);
    let mut redis = Redis::default();
    let mut lease = Lease::new("k".into(), 0);
    let admitted = (0..3)
        .filter(|_| request(&mut lease, &mut redis, 0, 3, now, nodes))
        .count();
    assert_eq!(admitted, 3);
    // Demand goes on, so the next round asks under 3...
    let refused = lease.admit_window(1, 3, now, ep(now), false, nodes, SYNC);
    assert!(!refused.allowed);
    let plan = lease
        .plan_window(3, now, ep(now), false, nodes, SYNC)
        .expect("a key in demand syncs");
    assert!(plan.want > 0, "the round asks for more: {plan:?}");
    // ...the limit goes up to 5 while that round is under way...
    lease.renumbered(false, 5);
    let answer = redis.answer(0, &plan, 3, now);
    // ...and the short answer does not make the key spent under 5: the key asks again
    // at once, so that the round after it plans under 5 (a request waiting for its grant
    // counts on that round to carry the key).
    assert!(lease.apply_window(&plan, &answer), "the key asks again");
    assert!(!lease.exhausted, "{lease:?}");
    let replanned = lease
        .plan_window(5, now, ep(now), false, nodes, SYNC)
        .expect("the key asks under the new numbers");
    assert_eq!(replanned.limit, 5);
    let answer = redis.answer(0, &replanned, 5, now);
    assert!(
        !lease.apply_window(&replanned, &answer),
        "an answer under the new numbers is final"
    );
    let admitted = (0..5)
        .filter(|_| request(&mut lease, &mut redis, 0, 5, now, nodes))
        .count();
    assert_eq!(admitted, 2, "{lease:?}");
}

/// One admission of a cost known from the response: what it held and, once settled, what
/// it cost and when.
#[derive(Debug, Clone)]
struct Held {
    node: usize,
    window: u64,
    reserve: u64,
    backed: bool,
}

/// Drives `nodes` leases against one model Redis with random interleavings of admissions
/// holding random reserves, settlements with random actual costs (less, equal, far more),
/// syncs sent, answered or failed, and time. Checks the documented overdraft bound (see
/// `settle`): each window's settled count stays within the limit plus the unbacked slack
/// plus what the admissions whose surcharge Redis heard after the window's last grant used
/// beyond their reserves; and that Redis ends up counting exactly what was settled.
fn settle_interleave(seed: u64, limit: u64, nodes: usize, sliding: bool) {
    use crate::limit::settle::{self, Settlement};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut redis = Redis {
        sliding,
        ..Redis::default()
    };
    let start = 100 * W;
    let live = nodes as u64;
    let mut leases: Vec<Lease> = (0..nodes)
        .map(|_| Lease::new("k".into(), start / W))
        .collect();
    // A plan in flight and the step it was taken at.
    let mut in_flight: Vec<Option<(WindowPlan, u64)>> = vec![None; nodes];
    // Per node, (step applied, step its report was taken) of every plan Redis applied.
    let mut applied: Vec<Vec<(u64, u64)>> = vec![Vec::new(); nodes];
    // Per window, the step of the last grant Redis made in it.
    let mut last_grant: HashMap<u64, u64> = HashMap::new();
    let mut open: Vec<Held> = Vec::new();
    // (held, actual, step settled)
    let mut settled: Vec<(Held, u64, u64)> = Vec::new();
    let mut now = start;
    let mut step = 0u64;
    let mut apply = |node: usize,
                     plan: &WindowPlan,
                     taken: u64,
                     step: u64,
                     now: u64,
                     lease: &mut Lease,
                     redis: &mut Redis| {
        let answer = redis.answer(node, plan, limit, now);
        if answer.grant > 0 {
            last_grant.insert(plan.window, step);
        }
        if let Some(next) = answer.next.filter(|n| n.granted > 0) {
            last_grant.insert(next.window, step);
        }
        let _ = lease.apply_window(plan, &answer);
        applied[node].push((step, taken));
    };
    let settle_one =
        |held: Held, actual: u64, lease: &mut Lease| match settle::settle(held.reserve, actual) {
            Settlement::Even => {}
            Settlement::Refund(units) => lease.refund(Some(held.window), units, held.backed),
            Settlement::Surcharge(units) => {
                let _ = lease.surcharge(Some(held.window), units);
            }
        };
    while now < start + 3 * W {
        step += 1;
        let node = rng.gen_range(0..nodes);
        match rng.gen_range(0..12) {
            0..=3 => {
                let reserve = rng.gen_range(1..=3u64).min(limit);
                let lease = &mut leases[node];
                if lease
                    .admit_window(reserve, limit, now, ep(now), sliding, live, SYNC)
                    .allowed
                {
                    open.push(Held {
                        node,
                        window: now / W,
                        reserve,
                        backed: lease.last_backed,
                    });
                }
            }
            4..=5 => {
                if let Some(i) = open.iter().position(|h| h.node == node) {
                    let held = open.swap_remove(i);
                    let actual = match rng.gen_range(0..4) {
                        0 => held.reserve,
                        1 => rng.gen_range(0..held.reserve),
                        _ => held.reserve + rng.gen_range(1..=4 * held.reserve),
                    };
                    settle_one(held.clone(), actual, &mut leases[node]);
                    settled.push((held, actual, step));
                }
            }
            6 | 7 => {
                if in_flight[node].is_none() {
                    in_flight[node] = leases[node]
                        .plan_window(limit, now, ep(now), sliding, live, SYNC)
                        .map(|p| (p, step));
                }
            }
            8..=10 => {
                if let Some((plan, taken)) = in_flight[node].take() {
                    apply(node, &plan, taken, step, now, &mut leases[node], &mut redis);
                }
            }
            _ => {
                if let Some((plan, _)) = in_flight[node].take() {
                    leases[node].restore_window(plan);
                }
            }
        }
        now += rng.gen_range(0..8);
    }
    // Every response ends, and every node reports.
    for held in std::mem::take(&mut open) {
        step += 1;
        let actual = held.reserve + rng.gen_range(0..=held.reserve);
        settle_one(held.clone(), actual, &mut leases[held.node]);
        settled.push((held, actual, step));
    }
    for node in 0..nodes {
        if let Some((plan, _)) = in_flight[node].take() {
            leases[node].restore_window(plan);
        }
        // Quiet syncs, until the key hands everything back.
        for _ in 0..=QUIET_RELEASE_SYNCS + 1 {
            step += 1;
            if let Some(plan) = leases[node].plan_window(limit, now, ep(now), sliding, live, SYNC) {
                apply(node, &plan, step, step, now, &mut leases[node], &mut redis);
            }
        }
    }
    let slack = live * unbacked_allowance(limit, live);
    let mut windows: Vec<u64> = settled.iter().map(|(h, _, _)| h.window).collect();
    windows.sort_unstable();
    windows.dedup();
    for window in windows {
        let in_window = || settled.iter().filter(move |(h, _, _)| h.window == window);
        let charged: u64 = in_window().map(|(_, actual, _)| actual).sum();
        // The step up to which each node's reports had reached Redis at the last grant.
        let heard = |node: usize| {
            last_grant.get(&window).map_or(0, |&grant| {
                applied[node]
                    .iter()
                    .filter(|(at, _)| *at <= grant)
                    .map(|(_, taken)| *taken)
                    .max()
                    .unwrap_or(0)
            })
        };
        let after = in_window()
            .filter(|(h, _, at)| *at > heard(h.node))
            .map(|(h, actual, _)| (h.reserve, *actual));
        let bound = limit + settle::overdraft_bound(slack, after);
        assert!(
            charged <= bound,
            "seed {seed}: window {window} settled {charged}, over the bound {bound} (limit {limit}, {nodes} nodes, sliding {sliding})"
        );
        assert_eq!(
            redis.windows.get(&window).map_or(0, |c| c.used),
            charged,
            "seed {seed}: Redis counts window {window} differently from what was settled"
        );
    }
}

#[test]
fn settled_costs_stay_within_the_limit_plus_the_documented_overdraft() {
    for seed in 0..400 {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5e77);
        let limit = if seed % 5 == 0 {
            rng.gen_range(300..=2_000)
        } else {
            rng.gen_range(3..=60)
        };
        let nodes = rng.gen_range(1..=4);
        settle_interleave(seed, limit, nodes, seed % 2 == 1);
    }
}

#[test]
fn a_surcharge_is_paid_from_what_the_node_holds_then_carried_as_debt() {
    let (limit, nodes) = (10, 1);
    let now = 10 * W;
    let mut redis = Redis::default();
    let mut lease = Lease::new("k".into(), 10);
    assert!(
        !lease
            .admit_window(1, limit, now, ep(now), false, nodes, SYNC)
            .allowed
    );
    sync(&mut lease, &mut redis, 0, limit, now, nodes);
    assert!(
        lease
            .admit_window(1, limit, now, ep(now), false, nodes, SYNC)
            .allowed
    );
    let held = lease.held();
    // The response cost 100 against a reserve of 1.
    assert!(lease.surcharge(Some(10), 99), "a debt asks for a sync");
    assert_eq!(lease.held(), 0, "what the node held paid first");
    assert_eq!(lease.provisional, 99 - held, "the rest is debt");
    assert_eq!(
        lease.provisional_spell, 0,
        "debt uses up no unbacked allowance"
    );
    sync(&mut lease, &mut redis, 0, limit, now + 1, nodes);
    assert_eq!(
        redis.windows[&10].used, 100,
        "Redis carries the whole cost past the limit"
    );
    let v = lease.admit_window(1, limit, now + 2, ep(now + 2), false, nodes, SYNC);
    assert!(!v.allowed, "the debt refuses later requests");
    assert_eq!(v.remaining, 0);
    // The next window starts clean.
    let later = 11 * W;
    sync(&mut lease, &mut redis, 0, limit, later, nodes);
    assert!(
        lease
            .admit_window(1, limit, later, ep(later), false, nodes, SYNC)
            .allowed
    );
}

#[test]
fn a_lease_holds_what_responses_really_cost_not_their_reserves() {
    // A response-charged key: each request holds a reserve of 1 and settles 150.
    let (limit, nodes, per_sync) = (1_000_000_000, 1, 100);
    let mut redis = Redis::default();
    let mut lease = Lease::new("k".into(), 10);
    let mut dry = 0;
    for round in 0..20u64 {
        let now = 10 * W + round * SYNC;
        sync(&mut lease, &mut redis, 0, limit, now, nodes);
        for _ in 0..per_sync {
            let v = lease.admit_window(1, limit, now, ep(now), false, nodes, SYNC);
            assert!(v.allowed);
            if round >= 3 && !lease.last_backed {
                dry += 1;
            }
            let _ = lease.surcharge(Some(10), 149);
        }
    }
    assert_eq!(
        dry, 0,
        "once the key's demand is known, the lease covers whole costs between syncs"
    );
    assert!(!lease.urgent, "no urgent refill");
}

#[test]
fn quota_held_elsewhere_is_not_spent_once_a_debt_fills_the_window() {
    let (limit, nodes) = (10, 2);
    let now = 10 * W;
    let mut redis = Redis::default();
    let mut a = Lease::new("k".into(), 10);
    let mut b = Lease::new("k".into(), 10);
    assert!(
        !a.admit_window(1, limit, now, ep(now), false, nodes, SYNC)
            .allowed
    );
    assert!(
        !b.admit_window(1, limit, now, ep(now), false, nodes, SYNC)
            .allowed
    );
    sync(&mut a, &mut redis, 0, limit, now, nodes);
    sync(&mut b, &mut redis, 1, limit, now, nodes);
    assert!(
        a.admit_window(1, limit, now, ep(now), false, nodes, SYNC)
            .allowed
    );
    // a's response cost 20 against its reserve of 1.
    let _ = a.surcharge(Some(10), 19);
    sync(&mut a, &mut redis, 0, limit, now + 1, nodes);
    // b has not heard yet: it spends what it holds, and reports it at its next sync.
    assert!(
        b.admit_window(1, limit, now + 1, ep(now + 1), false, nodes, SYNC)
            .allowed
    );
    assert!(b.held() >= 1, "b still holds quota");
    sync(&mut b, &mut redis, 1, limit, now + 1, nodes);
    assert!(
        !b.admit_window(1, limit, now + 2, ep(now + 2), false, nodes, SYNC)
            .allowed,
        "once b hears the window is overdrawn, what it holds adds nothing to the overdraft"
    );
}

#[test]
fn a_refund_after_its_report_still_counts_as_left() {
    // An all-or-nothing request admitted here, reported by a sync, then handed back (its
    // other policy refused): Redis's count holds the unit until the next report, and what
    // is left must not show it spent meanwhile, nor once the refund is in flight.
    let (limit, nodes, now) = (20, 1, 10 * W);
    let mut redis = Redis::default();
    let mut lease = Lease::new("k".into(), 0);
    let admitted = (0..10)
        .filter(|_| request(&mut lease, &mut redis, 0, limit, now, nodes))
        .count();
    assert_eq!(admitted, 10);
    sync(&mut lease, &mut redis, 0, limit, now, nodes);
    let left = |lease: &mut Lease| {
        let v = lease.admit_window(1, limit, now, ep(now), false, nodes, SYNC);
        assert!(v.allowed, "{lease:?}");
        lease.refund(Some(ep(now).id), 1, true);
        v.remaining
    };
    assert_eq!(left(&mut lease), 9, "10 spent, and this one");
    // Reported, then handed back: the refund waits for the next report.
    let v = lease.admit_window(1, limit, now, ep(now), false, nodes, SYNC);
    assert!(v.allowed);
    sync(&mut lease, &mut redis, 0, limit, now, nodes);
    lease.refund(Some(ep(now).id), 1, true);
    assert_eq!(left(&mut lease), 9, "the refund pending: still 10 spent");
    // In flight: planned, not answered yet.
    let plan = lease
        .plan_window(limit, now, ep(now), false, nodes, SYNC)
        .expect("the refund is reported");
    assert_eq!(plan.report.refund, 1);
    assert_eq!(left(&mut lease), 9, "the refund in flight: still 10 spent");
    let answer = redis.answer(0, &plan, limit, now);
    let _ = lease.apply_window(&plan, &answer);
    assert_eq!(left(&mut lease), 9, "the refund landed: still 10 spent");
}

#[test]
fn a_lease_short_of_the_typical_response_asks_redis_before_admitting() {
    // Responses cost about 20 against a reserve of 1. b holds a few units when a's
    // response overdraws the window: b's first try does not spend them on the strength of
    // its stale view, and once Redis has answered, b learns of the debt and refuses.
    let (limit, nodes, need) = (10, 2, 20);
    let now = 10 * W;
    let mut redis = Redis::default();
    let mut a = Lease::new("k".into(), 10);
    let mut b = Lease::new("k".into(), 10);
    for lease in [&mut a, &mut b] {
        let _ = lease.admit_window(1, limit, now, ep(now), false, nodes, SYNC);
    }
    sync(&mut a, &mut redis, 0, limit, now, nodes);
    sync(&mut b, &mut redis, 1, limit, now, nodes);
    assert!(b.held() >= 1 && b.held() < need, "{b:?}");
    assert!(
        a.admit_window(1, limit, now, ep(now), false, nodes, SYNC)
            .allowed
    );
    let _ = a.surcharge(Some(10), 19);
    sync(&mut a, &mut redis, 0, limit, now + 1, nodes);
    let first = b.admit_window_needing(1, need, limit, now + 1, ep(now + 1), false, nodes, SYNC);
    assert!(
        !first.allowed,
        "held {} < the typical cost {need}",
        b.held()
    );
    assert!(b.urgent, "the key asks Redis at once");
    sync(&mut b, &mut redis, 1, limit, now + 1, nodes);
    assert!(
        !b.admit_window(1, limit, now + 2, ep(now + 2), false, nodes, SYNC)
            .allowed,
        "the answer told b the window is overdrawn"
    );
}

#[test]
fn a_lease_short_of_the_typical_response_still_admits_a_reserve_the_fleet_has_left() {
    // One node, 30 left, responses typically 100: Redis grants the 30 and no more, and
    // a request whose reserve fits is admitted from them.
    let (limit, nodes, need) = (30, 1, 100);
    let now = 10 * W;
    let mut redis = Redis::default();
    let mut lease = Lease::new("k".into(), 10);
    let first = lease.admit_window_needing(1, need, limit, now, ep(now), false, nodes, SYNC);
    assert!(!first.allowed, "no grant yet");
    sync(&mut lease, &mut redis, 0, limit, now, nodes);
    sync(&mut lease, &mut redis, 0, limit, now, nodes);
    assert!(lease.held() < need, "{lease:?}");
    assert!(
        lease
            .admit_window(1, limit, now, ep(now), false, nodes, SYNC)
            .allowed,
        "Redis answered since the request came: its reserve is enough ({lease:?})"
    );
}
