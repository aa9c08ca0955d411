//! The Consul API double in a child process (this same binary, re-run), so that its memory
//! is not counted as the client's: the parent asks it for its counts over a pipe.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Set in the child's environment: serve the double instead of running the benchmark.
const CHILD: &str = "LOCKKIT_SCALE_CONSUL_DOUBLE";

/// In the child: serves the double until the parent closes the pipe, answering each line
/// with "<PUT ?acquire requests so far> <live sessions>", and returns true. In the parent,
/// false at once.
pub(crate) fn serve_if_child() -> bool {
    if std::env::var_os(CHILD).is_none() {
        return false;
    }
    use lockkit_testkit::consul_double::{Config, ConsulDouble};
    // Consul's default `session_ttl_min` (10 s) refuses the 3 s sessions of `?ttl=3s`: the
    // double allows them, as the tests' shared double does.
    let config = Config { session_ttl_min: Duration::from_millis(500), ..Config::default() };
    let double = ConsulDouble::start(config);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", double.addr).and_then(|()| out.flush()).expect("the parent reads the address");
    for _ in std::io::stdin().lock().lines().map_while(Result::ok) {
        writeln!(out, "{} {}", double.acquires(), double.sessions().len()).expect("the parent reads the counts");
        out.flush().expect("the parent reads the counts");
    }
    true
}

/// The double's child process; killed when dropped.
pub(crate) struct Double {
    /// Where it listens.
    pub(crate) addr: String,
    child: Child,
    pipe: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
}

impl Double {
    pub(crate) fn start() -> Double {
        let exe = std::env::current_exe().expect("this benchmark's path");
        let mut child = Command::new(exe)
            .env(CHILD, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the Consul double's process starts");
        let (stdin, stdout) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"));
        let mut stdout = BufReader::new(stdout);
        let mut addr = String::new();
        stdout.read_line(&mut addr).expect("the double's address");
        Double { addr: addr.trim().to_owned(), child, pipe: Mutex::new((stdin, stdout)) }
    }

    /// (PUT ?acquire requests so far, live sessions).
    pub(crate) fn counts(&self) -> (u64, u64) {
        let mut pipe = self.pipe.lock().expect("the pipe's lock");
        let (stdin, stdout) = &mut *pipe;
        writeln!(stdin, "count").and_then(|()| stdin.flush()).expect("the double reads");
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the double answers");
        let mut numbers = line.split_whitespace().map(|n| n.parse().expect("a count"));
        (numbers.next().expect("acquires"), numbers.next().expect("sessions"))
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
