//! A batch of commands in one round trip per server.
//!
//! redis-rs's cluster pipelines must stay within one slot, and a redirect answered to any
//! command sends the whole pipeline again to the new owner. For scripts that count, that
//! would run the commands that already succeeded a second time. So a batch is split by
//! slot owner here, one pipeline per master sent in parallel on the store's own connection
//! to that master, and only the commands a master answers with a redirect (`MOVED`, `ASK`,
//! `TRYAGAIN`, `CLUSTERDOWN`) are sent again, each on its own, through the cluster client,
//! which follows the redirect.

use super::slots::{slot_of, SlotMap};
use super::{Connection, Store};
use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, Pipeline, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One command's answer, or why it has none.
pub type Answer = Result<Value, String>;

impl Store {
    /// Runs every command of `pipe` (its `ignore` marks do not apply: every command gets
    /// its answer, in order). `scripts` are loaded and their calls retried when a server
    /// answers `NOSCRIPT` (a restart or a promoted replica lost them).
    pub async fn run(
        &self,
        connection: &Connection,
        pipe: &Pipeline,
        deadline: Duration,
        scripts: &[&str],
    ) -> Vec<Answer> {
        if pipe.is_empty() {
            return Vec::new();
        }
        match &self.cluster {
            None => {
                let mut c = connection.clone();
                let n = pipe.len();
                match run_on(&mut c, pipe, deadline, scripts).await {
                    Ok(values) => values.into_iter().map(answer).collect(),
                    Err(e) => vec![Err(e); n],
                }
            }
            Some(state) => {
                let map = state.map.load_full();
                self.run_split(connection, pipe, &map, deadline, scripts)
                    .await
            }
        }
    }

    async fn run_split(
        &self,
        connection: &Connection,
        pipe: &Pipeline,
        map: &SlotMap,
        deadline: Duration,
        scripts: &[&str],
    ) -> Vec<Answer> {
        let commands: Vec<&Cmd> = pipe.cmd_iter().collect();
        let mut answers: Vec<Option<Answer>> = vec![None; commands.len()];
        let mut by_master: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut again: Vec<usize> = Vec::new();
        for (i, cmd) in commands.iter().enumerate() {
            match routing_key(cmd).and_then(|key| map.owner(slot_of(key))) {
                Some(master) => by_master.entry(master).or_default().push(i),
                None => again.push(i),
            }
        }
        let sends = by_master.into_iter().map(|(master, indices)| {
            let commands = &commands;
            async move {
                // A master that failed its last call may hang: waiting for it would hold
                // the other masters' answers (and the keys waiting on them) to the
                // deadline. The probe says when it answers again.
                if self.master_failing(master) {
                    let why = format!("{master}: failed its last call, not answered a probe since");
                    return (master, indices, Err(why));
                }
                let result = match self.master(master).await {
                    Ok(mut c) => {
                        let mut mine = Pipeline::with_capacity(indices.len());
                        for i in &indices {
                            mine.add_command(commands[*i].clone());
                        }
                        run_on(&mut c, &mine, deadline, scripts).await
                    }
                    Err(e) => Err(e),
                };
                (master, indices, result)
            }
        });
        for (master, indices, result) in futures_util::future::join_all(sends).await {
            match result {
                Ok(mine) => {
                    self.master_answered(master);
                    for (i, value) in indices.into_iter().zip(mine) {
                        if redirected(&value) {
                            again.push(i);
                        } else {
                            answers[i] = Some(answer(value));
                        }
                    }
                }
                Err(e) => {
                    self.master_failed(master);
                    for i in indices {
                        answers[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        if !again.is_empty() {
            if let Some(state) = &self.cluster {
                state.map_stale.store(true, Ordering::Relaxed);
            }
            let retries = again.iter().map(|i| {
                let cmd = commands[*i];
                let mut c = connection.clone();
                async move {
                    let call = async {
                        let mut answer = c.req_packed_command(cmd).await;
                        if matches!(&answer, Err(e) if e.kind() == redis::ErrorKind::NoScriptError)
                        {
                            for code in scripts {
                                let mut load = redis::cmd("SCRIPT");
                                load.arg("LOAD").arg(*code);
                                c.req_packed_command(&load).await?;
                            }
                            answer = c.req_packed_command(cmd).await;
                        }
                        answer
                    };
                    match tokio::time::timeout(deadline, call).await {
                        Ok(Ok(value)) => Ok(value),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {deadline:?}")),
                    }
                }
            });
            let retried = futures_util::future::join_all(retries).await;
            for (i, answer) in again.into_iter().zip(retried) {
                if answer.is_err() {
                    if let Some(key) = routing_key(commands[i]) {
                        self.key_failed(&String::from_utf8_lossy(key));
                    }
                }
                answers[i] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err("not sent".into())))
            .collect()
    }
}

/// `commands` as one pipeline on one server: each one's reply (a server error among them),
/// or why the pipeline as a whole failed. Calls of `scripts` that come back `NOSCRIPT` are
/// retried once after loading them.
async fn run_on<C: ConnectionLike>(
    connection: &mut C,
    pipe: &Pipeline,
    deadline: Duration,
    scripts: &[&str],
) -> Result<Vec<Value>, String> {
    let commands: Vec<&Cmd> = pipe.cmd_iter().collect();
    let sent = tokio::time::timeout(
        deadline,
        connection.req_packed_commands(pipe, 0, commands.len()),
    )
    .await;
    let mut values = match sent {
        Err(_) => return Err(format!("no answer within {deadline:?}")),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(values)) => values,
    };
    let missing: Vec<usize> = (0..values.len())
        .filter(|i| error_kind(&values[*i]) == Some(ErrorKind::NoScriptError))
        .collect();
    if !missing.is_empty() && !scripts.is_empty() {
        let mut retry = Pipeline::with_capacity(scripts.len() + missing.len());
        for code in scripts {
            retry.cmd("SCRIPT").arg("LOAD").arg(*code);
        }
        for i in &missing {
            retry.add_command(commands[*i].clone());
        }
        let again = tokio::time::timeout(
            deadline,
            connection.req_packed_commands(&retry, 0, retry.len()),
        )
        .await;
        match again {
            Ok(Ok(answers)) => {
                for (i, value) in missing.iter().zip(answers.into_iter().skip(scripts.len())) {
                    values[*i] = value;
                }
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {deadline:?}")),
        }
    }
    values.resize(commands.len(), Value::Nil);
    Ok(values)
}

fn answer(value: Value) -> Answer {
    value.extract_error().map_err(|e| e.to_string())
}

fn error_kind(value: &Value) -> Option<ErrorKind> {
    match value {
        Value::ServerError(_) => value.clone().extract_error().err().map(|e| e.kind()),
        _ => None,
    }
}

/// Whether another node should answer this command (the slot moved or is moving), or the
/// cluster client should retry it (a promoted replica without the scripts).
fn redirected(value: &Value) -> bool {
    matches!(
        error_kind(value),
        Some(
            ErrorKind::Moved
                | ErrorKind::Ask
                | ErrorKind::TryAgain
                | ErrorKind::ClusterDown
                | ErrorKind::NoScriptError
        )
    )
}

/// The key a command is routed by: the first key of a script call, else the first
/// argument (every command tollgate batches is keyed).
fn routing_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(bytes) => bytes,
        redis::Arg::Cursor => &b""[..],
    });
    let name = args.next()?;
    if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        let _script = args.next()?;
        let keys = args.next()?;
        if keys == b"0" {
            return None;
        }
        return args.next();
    }
    args.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_route_by_their_first_key() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc").arg(2).arg("{t}:a").arg("{t}:b").arg(5);
        assert_eq!(routing_key(&eval), Some(&b"{t}:a"[..]));
        let mut push = redis::cmd("LPUSH");
        push.arg("list").arg("x");
        assert_eq!(routing_key(&push), Some(&b"list"[..]));
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0).arg(1);
        assert_eq!(routing_key(&keyless), None);
    }

    #[test]
    fn redirects_are_told_from_failures() {
        let reply = |resp: &str| redis::parse_redis_value(resp.as_bytes()).unwrap();
        assert!(redirected(&reply("-MOVED 3999 127.0.0.1:6381\r\n")));
        assert!(redirected(&reply("-ASK 3999 127.0.0.1:6381\r\n")));
        assert!(redirected(&reply(
            "-TRYAGAIN Multiple keys request during rehashing\r\n"
        )));
        assert!(!redirected(&reply("-ERR wrong number of arguments\r\n")));
        assert!(!redirected(&Value::Nil));
    }
}
