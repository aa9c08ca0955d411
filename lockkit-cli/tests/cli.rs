//! The `lockkit` command-line tool, driven as a user would: real processes, real signals.
//! Every backend that can be shared between processes runs these, one `cli_tests!` line each.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, Command};

use lockkit_testkit::Target;

const LOCKKIT: &str = env!("CARGO_BIN_EXE_lockkit");

macro_rules! cli_tests {
    ($backend:ident, $target:expr) => {
        mod $backend {
            cli_tests!(@tests $target;
                concurrent_runs_serialise_and_tokens_grow,
                no_wait_and_timeout_exit_75_while_held,
                a_signal_while_waiting_exits_cleanly_and_leaves_nothing_behind,
                losing_the_lock_stops_the_whole_process_group,
                status_reports_holder_and_token,
                the_commands_exit_status_passes_through,
                bad_input_gives_one_line_and_exit_64,
                elect_runs_one_leader_at_a_time_and_hands_over,
                elect_campaigns_again_after_a_loss_unless_once,
                leader_watch_follows_the_election,
            );
        }
    };
    (@tests $target:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(&$target()).await;
            }
        )*
    };
}

cli_tests!(file, crate::Target::file);
#[cfg(feature = "etcd")]
cli_tests!(etcd, crate::Target::etcd);
#[cfg(feature = "redis")]
cli_tests!(redis, crate::Target::redis);
#[cfg(feature = "redis")]
cli_tests!(redis_cluster, crate::Target::redis_cluster);
#[cfg(feature = "zookeeper")]
cli_tests!(zookeeper, crate::Target::zookeeper);
#[cfg(feature = "consul")]
cli_tests!(consul, crate::Target::consul);

fn lockkit(args: &[&str]) -> Command {
    let mut command = Command::new(LOCKKIT);
    command.args(args).kill_on_drop(true);
    command
}

/// Runs to completion within a minute: (status, stdout, stderr).
async fn output(mut command: Command) -> (ExitStatus, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("lockkit finished within a minute")
        .expect("lockkit ran");
    (out.status, String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Reads lines until one satisfies `wanted`, within 30 s, and returns it.
async fn line_matching<R: AsyncRead + Unpin>(lines: &mut Lines<BufReader<R>>, wanted: impl Fn(&str) -> bool) -> String {
    let read = async {
        while let Some(line) = lines.next_line().await.expect("readable output") {
            if wanted(&line) {
                return line;
            }
        }
        panic!("output ended before the expected line");
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("the expected line within 30 s")
}

/// A `lockkit run` whose command prints `ready <token>` and then sleeps; returns once it holds.
async fn holder(url: &str, extra: &[&str]) -> (Child, u64) {
    let mut args = vec!["run", url, "job"];
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", "echo ready $LOCKKIT_FENCING_TOKEN; exec sleep 60"]);
    let mut child = lockkit(&args).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = line_matching(&mut lines, |l| l.starts_with("ready ")).await;
    (child, line["ready ".len()..].trim().parse().unwrap())
}

fn send(child: &Child, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id().expect("running") as i32, signal) };
}

fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie whose parent is gone (and not yet reaped by init) is dead too.
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Four `lockkit run` at once never overlap, and each command sees a larger token.
async fn concurrent_runs_serialise_and_tokens_grow(t: &Target) {
    let scratch = tempfile::tempdir().unwrap();
    let script = r#"if [ -e "$D/inside" ]; then echo overlap >> "$D/log"; fi
touch "$D/inside"; sleep 0.1; rm "$D/inside"; echo "$LOCKKIT_FENCING_TOKEN" >> "$D/log""#;
    let url = t.url();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let mut command = lockkit(&["run", &url, "job", "--", "sh", "-c", script]);
            command.env("D", scratch.path());
            tokio::spawn(output(command))
        })
        .collect();
    for run in runs {
        let (status, _, stderr) = run.await.unwrap();
        assert!(status.success(), "{status}: {stderr}");
    }
    let log = std::fs::read_to_string(scratch.path().join("log")).unwrap();
    assert!(!log.contains("overlap"), "two commands ran at once:\n{log}");
    let tokens: Vec<u64> = log.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(tokens.len(), 4);
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

/// While another `lockkit run` holds the lock, `--no-wait` and `--timeout` exit 75.
async fn no_wait_and_timeout_exit_75_while_held(t: &Target) {
    let url = t.url();
    let (mut held, _) = holder(&url, &[]).await;
    let (status, _, stderr) = output(lockkit(&["run", &url, "job", "--no-wait", "--", "true"])).await;
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("held elsewhere"), "{stderr}");
    let (status, _, stderr) = output(lockkit(&["run", &url, "job", "--timeout", "300ms", "--", "true"])).await;
    assert_eq!(status.code(), Some(75), "{stderr}");
    held.kill().await.unwrap();
}

/// SIGTERM while waiting makes `lockkit run` stop waiting and exit 143, without running the
/// command and without leaving a waiter behind; SIGTERM to a holder is forwarded to its
/// command, and the lock is released.
async fn a_signal_while_waiting_exits_cleanly_and_leaves_nothing_behind(t: &Target) {
    let url = t.url();
    let (held, _) = holder(&url, &[]).await;
    let mut waiter = lockkit(&["-v", "run", &url, "job", "--", "sh", "-c", "echo ran"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(waiter.stderr.take().unwrap()).lines();
    line_matching(&mut stderr, |l| l.contains("waiting")).await;
    send(&waiter, libc::SIGTERM);
    let out = tokio::time::timeout(Duration::from_secs(10), waiter.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(143));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"), "the command ran without the lock");

    send(&held, libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(10), held.wait_with_output()).await.unwrap().unwrap().status;
    assert_eq!(status.code(), Some(143), "the forwarded SIGTERM ended the command");
    let (status, _, stderr) = output(lockkit(&["run", &url, "job", "--no-wait", "--", "true"])).await;
    assert!(status.success(), "the lock is free again: {stderr}");
}

/// When the lock is lost, the command's whole process group — a grandchild too, even one that
/// ignores SIGTERM — is stopped within the grace period, and lockkit exits 76.
async fn losing_the_lock_stops_the_whole_process_group(t: &Target) {
    let url = t.url();
    let script = r#"trap "" TERM; sleep 60 & echo "grandchild $!"; wait"#;
    let mut run = lockkit(&["run", &url, "job", "--grace", "500ms", "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(run.stdout.take().unwrap()).lines();
    let line = line_matching(&mut stdout, |l| l.starts_with("grandchild ")).await;
    let grandchild: u32 = line["grandchild ".len()..].parse().unwrap();

    assert!(lockkit_testkit::support::connect(&url).await.force_release("job").await.unwrap());
    let out = tokio::time::timeout(Duration::from_secs(15), run.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(76), "{stderr}");
    assert!(stderr.contains("lost lock `job`"), "{stderr}");
    assert!(dead(grandchild), "grandchild {grandchild} survived the loss of the lock");
}

/// `lockkit status` shows the holder metadata and fencing token, as text and JSON, and exits 0
/// while held and 1 when free.
async fn status_reports_holder_and_token(t: &Target) {
    let url = t.url();
    let (mut held, token) = holder(&url, &["--holder", "nightly on host-7"]).await;
    let (status, stdout, _) = output(lockkit(&["status", &url, "job"])).await;
    assert_eq!(status.code(), Some(0));
    assert!(stdout.contains("held by nightly on host-7") && stdout.contains(&format!("token {token}")), "{stdout}");
    let (status, stdout, _) = output(lockkit(&["status", &url, "job", "--json"])).await;
    assert_eq!(status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["held"], true);
    assert_eq!(json["holder"], "nightly on host-7");
    assert_eq!(json["token"], token);
    send(&held, libc::SIGTERM); // stopped gracefully, it releases (a SIGKILL would leave the grant to its TTL)
    held.wait().await.unwrap();
    let (status, stdout, _) = output(lockkit(&["status", &url, "job", "--json"])).await;
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["held"], false);
}

/// `lockkit run` exits with the command's status; a signal death is 128 + signal; a missing
/// command is 127.
async fn the_commands_exit_status_passes_through(t: &Target) {
    let url = t.url();
    for (script, expected) in [("exit 7", 7), ("kill -9 $$", 137), ("true", 0)] {
        let (status, _, stderr) = output(lockkit(&["run", &url, "job", "--", "sh", "-c", script])).await;
        assert_eq!(status.code(), Some(expected), "{script}: {stderr}");
    }
    let (status, _, stderr) = output(lockkit(&["run", &url, "job", "--", "/nonexistent/command"])).await;
    assert_eq!(status.code(), Some(127), "{stderr}");
    assert!(!Path::new("/nonexistent/command").exists());
}

/// Bad URLs, schemes, options, names and arguments exit 64, an unreachable server 69: one
/// clear line each, no panic.
async fn bad_input_gives_one_line_and_exit_64(t: &Target) {
    let url = t.url();
    let bad_option = format!("{url}&colour=blue");
    let cases: Vec<(Vec<&str>, &str, i32)> = vec![
        (vec!["run", "not a url", "job", "--", "true"], "expected `scheme://", 64),
        (vec!["run", "mysql://db", "job", "--", "true"], "unknown lock URL scheme", 64),
        (vec!["run", &bad_option, "job", "--", "true"], "unknown option `colour`", 64),
        (vec!["run", &url, "", "--", "true"], "cannot be empty", 64),
        (vec!["status", &url, "job", "--ttl", "5s"], "unexpected argument", 64),
        (vec!["run", &url, "job", "--ttl", "50ms", "--", "true"], "invalid lock options", 64),
    ];
    for (args, expected, code) in cases {
        let (status, _, stderr) = output(lockkit(&args)).await;
        assert_eq!(status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if stderr.starts_with("lockkit: ") {
            assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        } else {
            assert!(stderr.contains("Usage:"), "{args:?}: clap explains the usage: {stderr}");
        }
    }
    // Each network scheme: either this build lacks its driver (64, naming the feature), or
    // nobody listens on port 1 (69).
    for url in ["zk://127.0.0.1:1", "consul://127.0.0.1:1", "etcd://127.0.0.1:1", "redis://127.0.0.1:1"] {
        let (status, _, stderr) = output(lockkit(&["run", url, "job", "--", "true"])).await;
        match status.code() {
            Some(64) => assert!(stderr.contains("cargo install lockkit --features"), "{url}: {stderr}"),
            Some(69) => assert!(stderr.contains("cannot reach 127.0.0.1:1"), "{url}: {stderr}"),
            other => panic!("{url}: exit {other:?}: {stderr}"),
        }
        assert_eq!(stderr.lines().count(), 1, "{url}: {stderr}");
    }
}

/// A `lockkit elect` whose command prints `leading <term>` and then sleeps; its output lines.
fn candidate(url: &str, value: &str, extra: &[&str]) -> (Child, Lines<BufReader<tokio::process::ChildStdout>>) {
    let mut args = vec!["elect", url, "sched", "--value", value, "--grace", "500ms"];
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", "echo leading $LOCKKIT_TERM $LOCKKIT_FENCING_TOKEN; exec sleep 60"]);
    let mut child = lockkit(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// The term a `leading <term> <token>` line shows (the two are the same).
async fn leading(lines: &mut Lines<BufReader<tokio::process::ChildStdout>>) -> u64 {
    let line = line_matching(lines, |l| l.starts_with("leading ")).await;
    let fields: Vec<u64> = line.split(' ').skip(1).map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields[0], fields[1], "LOCKKIT_TERM is the fencing token: {line}");
    fields[0]
}

/// Two `lockkit elect` candidates: one leads (and `lockkit leader` shows its value and term),
/// the other waits; when the leader is stopped it resigns, and the other leads in a later term.
async fn elect_runs_one_leader_at_a_time_and_hands_over(t: &Target) {
    let url = t.url();
    let (mut first, mut first_lines) = candidate(&url, "node-a", &[]);
    let term = leading(&mut first_lines).await;
    let (mut second, mut second_lines) = candidate(&url, "node-b", &[]);
    let (status, stdout, _) = output(lockkit(&["leader", &url, "sched", "--json"])).await;
    assert_eq!(status.code(), Some(0), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((json["leader"]["value"].as_str(), json["leader"]["term"].as_u64()), (Some("node-a"), Some(term)));
    let early = tokio::time::timeout(Duration::from_millis(500), second_lines.next_line()).await;
    assert!(early.is_err(), "two leaders at once: {early:?}");
    send(&first, libc::SIGTERM);
    let status = first.wait().await.unwrap();
    assert_eq!(status.code(), Some(143), "the command died of the forwarded SIGTERM");
    let next = leading(&mut second_lines).await;
    assert!(next > term, "{next} after {term}");
    send(&second, libc::SIGTERM);
    second.wait().await.unwrap();
    let (status, stdout, _) = output(lockkit(&["leader", &url, "sched"])).await;
    assert_eq!(status.code(), Some(1), "nobody leads once both resigned: {stdout}");
    assert!(stdout.contains("no leader"), "{stdout}");
}

/// Leadership taken away (force release): the command is stopped and lockkit campaigns again,
/// leading in a later term; with `--once` it exits 76 instead.
async fn elect_campaigns_again_after_a_loss_unless_once(t: &Target) {
    let url = t.url();
    let admin = lockkit_testkit::support::connect(&url).await;
    let (mut again, mut lines) = candidate(&url, "node-a", &[]);
    let term = leading(&mut lines).await;
    assert!(admin.force_release("sched").await.unwrap());
    let next = leading(&mut lines).await;
    assert!(next > term, "{next} after {term}");
    send(&again, libc::SIGTERM);
    again.wait().await.unwrap();

    let (once, mut lines) = candidate(&url, "node-a", &["--once"]);
    leading(&mut lines).await;
    assert!(admin.force_release("sched").await.unwrap());
    let out = tokio::time::timeout(Duration::from_secs(15), once.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(76), "{stderr}");
    assert!(stderr.contains("lost leadership of `sched`"), "{stderr}");
}

/// `lockkit leader --watch` prints the leader now and a line at each change, where the backend
/// can be followed; elsewhere it says so and exits 70.
async fn leader_watch_follows_the_election(t: &Target) {
    let url = t.url();
    let mut watch =
        lockkit(&["leader", &url, "sched", "--watch"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    if !lockkit_testkit::support::connect(&url).await.capabilities().observe {
        let out = tokio::time::timeout(Duration::from_secs(15), watch.wait_with_output()).await.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(70), "{stderr}");
        assert!(stderr.contains("is not supported by the"), "{stderr}");
        return;
    }
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    line_matching(&mut lines, |l| l == "election `sched`: no leader").await;
    let (mut leader, mut leader_lines) = candidate(&url, "node-a", &[]);
    let term = leading(&mut leader_lines).await;
    line_matching(&mut lines, |l| l == format!("election `sched`: led by node-a, term {term}")).await;
    send(&leader, libc::SIGTERM);
    leader.wait().await.unwrap();
    line_matching(&mut lines, |l| l == "election `sched`: no leader").await;
    send(&watch, libc::SIGINT);
    let status = tokio::time::timeout(Duration::from_secs(10), watch.wait()).await.unwrap().unwrap();
    assert!(status.success(), "interrupted, it exits 0: {status}");
}

// The command's process group. lockkit handles it the same way on every backend: file:// only.

/// `lockkit run` of a command that leaves a background child in its process group, once `sh`
/// and both its `sleep`s run; the group's id.
async fn run_with_a_background_child(url: &str) -> (Child, i32) {
    let script = "sleep 30 & echo group $$; sleep 30";
    let mut run = lockkit(&["run", url, "job", "--", "sh", "-c", script]).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(run.stdout.take().unwrap()).lines();
    let line = line_matching(&mut stdout, |l| l.starts_with("group ")).await;
    let group: i32 = line["group ".len()..].parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || group_members(group).len() == 3).await,
        "sh and both sleeps started: {:?}",
        group_members(group)
    );
    (run, group)
}

/// The processes of group `group` that are not zombies.
fn group_members(group: i32) -> Vec<u32> {
    let Ok(processes) = std::fs::read_dir("/proc") else { return Vec::new() };
    processes
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // After `(comm)`: state, ppid, pgrp.
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let (state, pgrp) = (fields.next()?, fields.nth(1)?);
            (state != "Z" && pgrp == group.to_string()).then_some(pid)
        })
        .collect()
}

/// Polls `condition` every 10 ms until it holds or `limit` passes; whether it held. For
/// process states, which have no event to wait for.
async fn eventually(limit: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// `kill -9` of lockkit (as the OOM killer would) kills the command's whole group — a
/// background grandchild too — within a second, so nothing runs on without the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_lockkit_kills_the_commands_whole_group() {
    let target = Target::file();
    let url = target.url();
    let (mut run, group) = run_with_a_background_child(&url).await;

    run.kill().await.unwrap();
    let gone = eventually(Duration::from_secs(1), || group_members(group).is_empty()).await;
    assert!(gone, "1 s after lockkit died, processes of its command's group still run: {:?}", group_members(group));
}

/// When the command exits, what it left in its group gets SIGTERM — while the lock is still
/// held — and, if it survives, SIGKILL after --grace; only then is the lock released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_the_command_are_stopped_before_the_lock_is_released() {
    let target = Target::file();
    let url = target.url();
    let scratch = tempfile::tempdir().unwrap();
    // Survives SIGTERM, recording whether the lock was still held when it came.
    let leftover = r#"trap '"$LOCKKIT" status "$LOCKKIT_URL" job > "$D/at_term"' TERM
echo "leftover $$"; echo > "$D/ready"; while :; do sleep 1; done"#;
    // Exits once the leftover has set its trap.
    let command = r#"mkfifo "$D/ready"; sh -c "$LEFTOVER" & read _ < "$D/ready""#;
    let started = std::time::Instant::now();
    let mut run = lockkit(&["run", &url, "job", "--grace", "1s", "--", "sh", "-c", command])
        .env("D", scratch.path())
        .env("LOCKKIT", LOCKKIT)
        .env("LEFTOVER", leftover)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(run.stdout.take().unwrap()).lines();
    let line = line_matching(&mut stdout, |l| l.starts_with("leftover ")).await;
    let leftover: u32 = line["leftover ".len()..].parse().unwrap();

    let status = tokio::time::timeout(Duration::from_secs(15), run.wait()).await.expect("lockkit exited").unwrap();
    assert!(dead(leftover), "the command's leftover {leftover} survived lockkit");
    assert_eq!(status.code(), Some(0), "the command's own status");
    assert!(started.elapsed() >= Duration::from_secs(1), "SIGKILL came only after --grace");
    let at_term = std::fs::read_to_string(scratch.path().join("at_term")).unwrap_or_default();
    assert!(at_term.contains("held"), "the lock was still held when SIGTERM came: {at_term:?}");
    let (status, _, stderr) = output(lockkit(&["run", &url, "job", "--no-wait", "--", "true"])).await;
    assert!(status.success(), "the lock is free afterwards: {stderr}");
}

/// Under a terminal, the command is the terminal's foreground group: it reads the terminal,
/// Ctrl-C reaches it (and not lockkit's caller), and the caller has the terminal back after.
/// (The command is `sed`, not a shell: `sh -c` defers a SIGINT that comes while it forks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_reading_the_terminal_runs_in_the_foreground() {
    let target = Target::file();
    let session = r#""$LOCKKIT" run "$URL" job -- sh -c 'echo ready; exec sed -u s/^/got:/'; echo "rc:$?"
read b; echo "back:$b""#;
    let Some((mut script, mut terminal, mut stdout)) = under_a_terminal(session, &target) else { return };
    // Typed only once the command runs: `script` may flush input typed before it set up the
    // terminal.
    line_matching(&mut stdout, |l| l.contains("ready")).await;
    terminal.write_all(b"hello\n").await.unwrap();
    line_matching(&mut stdout, |l| l.contains("got:hello")).await;
    terminal.write_all(b"\x03").await.unwrap(); // Ctrl-C
    let rc = line_matching(&mut stdout, |l| l.contains("rc:")).await;
    assert!(rc.contains("rc:130"), "Ctrl-C ended the command, and lockkit exited 130: {rc:?}");
    terminal.write_all(b"again\n").await.unwrap();
    line_matching(&mut stdout, |l| l.contains("back:again")).await;
    drop(terminal);
    let status = tokio::time::timeout(Duration::from_secs(10), script.wait()).await.expect("script exited").unwrap();
    assert!(status.success(), "{status}");
}

/// Runs the shell `session` under a pseudo-terminal (`script`), with `$LOCKKIT` and `$URL` set:
/// the child, what is typed on the terminal, and what it shows. `None` (the test is skipped)
/// where `script` is not installed.
fn under_a_terminal(
    session: &str,
    target: &Target,
) -> Option<(Child, tokio::process::ChildStdin, Lines<BufReader<tokio::process::ChildStdout>>)> {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return None;
    }
    let mut script = Command::new("script")
        .args(["-qec", session, "/dev/null"])
        .env("LOCKKIT", LOCKKIT)
        .env("URL", target.url())
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let terminal = script.stdin.take().unwrap();
    let stdout = BufReader::new(script.stdout.take().unwrap()).lines();
    Some((script, terminal, stdout))
}

/// Ctrl-Z under a job-control shell stops the command and lockkit with it, as one job (while
/// the lock stays held); `fg` gives the command the terminal back and continues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_z_suspends_the_command_with_lockkit_and_fg_resumes_it() {
    let target = Target::file();
    // `set -m`: job control, as in an interactive shell (lockkit in its own, non-orphaned group).
    let session = r#"set -m
"$LOCKKIT" run "$URL" job -- sh -c 'echo ready; exec sed -u s/^/got:/'
echo "stopped:$?"
"$LOCKKIT" status "$URL" job && echo "still held"
fg
echo "rc:$?""#;
    let Some((mut script, mut terminal, mut stdout)) = under_a_terminal(session, &target) else { return };
    line_matching(&mut stdout, |l| l.contains("ready")).await;
    terminal.write_all(b"\x1a").await.unwrap(); // Ctrl-Z
    let stopped = line_matching(&mut stdout, |l| l.contains("stopped:")).await;
    assert!(stopped.contains("stopped:148"), "lockkit stopped by SIGTSTP, as the shell sees it: {stopped:?}");
    line_matching(&mut stdout, |l| l.contains("still held")).await;
    terminal.write_all(b"hello\n").await.unwrap();
    line_matching(&mut stdout, |l| l.contains("got:hello")).await;
    terminal.write_all(b"\x03").await.unwrap(); // Ctrl-C
    let rc = line_matching(&mut stdout, |l| l.contains("rc:")).await;
    assert!(rc.contains("rc:130"), "Ctrl-C ended the command, and lockkit exited 130: {rc:?}");
    drop(terminal);
    let status = tokio::time::timeout(Duration::from_secs(10), script.wait()).await.expect("script exited").unwrap();
    assert!(status.success(), "{status}");
}

/// Secrets typed into a URL never show in what lockkit prints: a Base64 password pasted with
/// its `/` unencoded (it was printed in two fragments of the error line) and a misspelled
/// `token` option; and the `LOCKKIT_URL` a command gets parses back to the same directory (an
/// encoded `?` in the path was exported decoded, and read back as an option).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_show_and_the_commands_url_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().display().to_string();
    for (url, secret) in [
        ("redis://app:AbC/dEf+gh==@redis.internal:6379".to_owned(), ["AbC", "dEf", "gh=="]),
        (format!("file://{base}/locks?tokn=QsXe/Kr3t"), ["QsXe", "Kr3t", "QsXe/Kr3t"]),
    ] {
        let (status, stdout, stderr) = output(lockkit(&["run", &url, "job", "--", "true"])).await;
        assert_eq!(status.code(), Some(64), "{stderr}");
        for fragment in secret {
            assert!(!stderr.contains(fragment) && !stdout.contains(fragment), "{url}: {stderr}");
        }
    }
    let url = format!("file://{base}/a%3Fb");
    let (status, stdout, stderr) = output(lockkit(&["run", &url, "job", "--", "sh", "-c", "echo $LOCKKIT_URL"])).await;
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), url, "the exported URL");
    assert!(dir.path().join("a?b").is_dir(), "the lock directory is the decoded path");
}

/// Random argument lists never make lockkit panic, hang or die of a signal: every one ends
/// with a documented exit status (the no-panic fuzz of URL parsing, extended to the CLI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_arguments_end_with_a_documented_status() {
    let dir = tempfile::tempdir().unwrap();
    let file_url = format!("file://{}/fuzz", dir.path().display());
    let words = [
        "run",
        "status",
        "--ttl",
        "50ms",
        "1s",
        "--timeout",
        "--no-wait",
        "--grace",
        "-v",
        "--",
        "true",
        "memory://",
        &file_url,
        "job",
        "",
        "x:y%",
        "--holder",
        "=",
        "-",
        "redis://a:b/c@d",
        "memory://?ttl=1h&refresh=59m",
        "é🔒",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..150 {
        let args: Vec<&str> = (0..next() % 7).map(|_| words[(next() % words.len() as u64) as usize]).collect();
        let run = output(lockkit(&args));
        let (status, _, stderr) = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap_or_else(|_| panic!("{args:?}: no exit within 10 s"));
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        let code = status.code().unwrap_or_else(|| panic!("{args:?}: died of a signal: {status:?}"));
        assert!([0, 1, 64, 69, 70, 75].contains(&code), "{args:?}: exit {code}: {stderr}");
    }
}

/// A command's child that calls `setsid` leaves the command's process group, so the sweep of
/// the group does not reach it (observed before: `setsid sleep 30` alive after `lockkit run`
/// returned 0). lockkit is the subreaper of its descendants: orphaned, it becomes lockkit's
/// child and is stopped before the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descendant_that_calls_setsid_does_not_outlive_the_lock() {
    let target = Target::file();
    let url = target.url();
    let script = "setsid sleep 30 >/dev/null 2>&1 & echo escaped $!; sleep 0.3";
    let (status, stdout, stderr) =
        output(lockkit(&["run", &url, "job", "--grace", "1s", "--", "sh", "-c", script])).await;
    assert!(status.success(), "{stderr}");
    let pid: u32 = stdout.trim().strip_prefix("escaped ").expect("the pid line").parse().unwrap();
    let gone = eventually(Duration::from_secs(1), || dead(pid)).await;
    if !gone {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(gone, "the setsid'ed descendant {pid} still runs after lockkit released the lock");
}

/// The watchdog killed (by the OOM killer, say) while the command runs: lockkit notices (it
/// did not, and ran the command on with only PDEATHSIG guarding the command itself, so a
/// background grandchild survived lockkit's death) and stops the command's group at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_watchdog_stops_the_command() {
    let target = Target::file();
    let url = target.url();
    let (mut run, group) = run_with_a_background_child(&url).await;
    let lockkit_pid = run.id().unwrap();
    let watchdog = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_owned));
            cmdline.contains("__watchdog") && ppid == Some(lockkit_pid.to_string())
        })
        .expect("lockkit's watchdog");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(watchdog as i32, libc::SIGKILL) };
    // lockkit could stop the command here (it is now unguarded); give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.kill().await.unwrap();
    let gone = eventually(Duration::from_secs(1), || group_members(group).is_empty()).await;
    let left = group_members(group);
    for pid in &left {
        // SAFETY: as above.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    assert!(gone, "1 s after lockkit died (its watchdog killed first), its command's group still runs: {left:?}");
}

/// With ACLs on, the right token from `CONSUL_HTTP_TOKEN` (the CLI's child env) works, and a
/// wrong one is a clear permission error (exit 69) without the token in it.
#[cfg(feature = "consul")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_acl_token_from_the_environment() {
    use lockkit_testkit::consul_double::{Config, ConsulDouble};
    let token = "s3cret-acl-token";
    let double =
        ConsulDouble::start(Config { session_ttl_min: Duration::from_millis(500), acl_token: Some(token.into()) });
    let url = |query: &str| format!("consul://{}?ttl=1000ms{query}", double.addr);
    let locks = lockkit_testkit::support::connect(&url(&format!("&token={token}"))).await;
    let _guard = locks.acquire("guarded").await.unwrap();

    let status = |env_token: &'static str| {
        Command::new(LOCKKIT).args(["status", &url(""), "guarded"]).env("CONSUL_HTTP_TOKEN", env_token).output()
    };
    let right = status(token).await.unwrap();
    assert_eq!(right.status.code(), Some(0), "held: {}", String::from_utf8_lossy(&right.stderr));
    let wrong = status("not-it").await.unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("permission denied") && !stderr.contains("not-it"), "{stderr}");
}

/// `--permits N` runs commands under one of N permits (N at once, the next `--no-wait` exits
/// 75, `status` lists the holders); `--read` commands share, a `--write` waits for them;
/// `--permits` with `--read` is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_and_read_write_holds_from_the_command_line() {
    let url = Target::file().url();
    let (mut first, a) = holder(&url, &["--permits", "2"]).await;
    let (mut second, b) = holder(&url, &["--permits", "2"]).await;
    assert_ne!(a, b, "each permit has its own token");
    let (status, _, stderr) = output(lockkit(&["run", &url, "job", "--permits", "2", "--no-wait", "--", "true"])).await;
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("permit of semaphore `job`"), "{stderr}");
    let (status, stdout, _) = output(lockkit(&["status", &url, "job"])).await;
    assert_eq!(status.code(), Some(0));
    assert!(stdout.starts_with("semaphore `job`: 2 of 2 permits held by"), "{stdout}");
    first.kill().await.unwrap();
    second.kill().await.unwrap();

    let url = Target::file().url();
    let (mut reader, _) = holder(&url, &["--read"]).await;
    let (mut other_reader, _) = holder(&url, &["--read"]).await;
    let (status, _, stderr) = output(lockkit(&["run", &url, "job", "--write", "--no-wait", "--", "true"])).await;
    assert_eq!(status.code(), Some(75), "a write beside readers: {stderr}");
    reader.kill().await.unwrap();
    other_reader.kill().await.unwrap();
    let (status, _, stderr) = output(lockkit(&["run", &url, "job", "--write", "--timeout", "10s", "--", "true"])).await;
    assert!(status.success(), "{stderr}");

    let (status, _, stderr) = output(lockkit(&["run", &url, "job", "--permits", "2", "--read", "--", "true"])).await;
    assert_eq!(status.code(), Some(64), "{stderr}");
}
