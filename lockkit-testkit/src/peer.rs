//! Other clients of the same backends, driven from a test: a process that takes one command per
//! line on its standard input and answers each with one line. [`Peer::curator`] is Apache
//! Curator's recipes (Java, run from `peers/CuratorPeer.java` with Debian's jars; its header
//! lists the commands); [`Peer::spawn`] runs any other (a test's kazoo script in Python).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long a peer may take over one answer (a JVM's first answer includes compiling the peer).
const ANSWER_BOUND: Duration = Duration::from_secs(60);

/// The jars `peers/CuratorPeer.java` runs with: Debian's `libcurator-recipes-java` and what it
/// depends on (installed by `scripts/install-deps`).
const CURATOR_CLASSPATH: &[&str] = &[
    "curator-recipes",
    "curator-framework",
    "curator-client",
    "zookeeper",
    "zookeeper-jute",
    "guava",
    "slf4j-api",
    "slf4j-nop",
];

/// A peer process, killed when dropped.
#[derive(Debug)]
pub struct Peer {
    what: String,
    _process: Child,
    to: ChildStdin,
    from: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    /// Starts `command` as the peer `what` (named in failures).
    pub fn spawn(what: &str, command: &mut Command) -> Peer {
        let mut process = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{what} does not start ({e}); scripts/install-deps installs it"));
        let to = process.stdin.take().expect("piped");
        let from = BufReader::new(process.stdout.take().expect("piped")).lines();
        Peer { what: what.to_owned(), _process: process, to, from }
    }

    /// A Curator peer connected to the ZooKeeper server on `port` of 127.0.0.1.
    pub fn curator(port: u16) -> Peer {
        let classpath: Vec<String> = CURATOR_CLASSPATH.iter().map(|jar| format!("/usr/share/java/{jar}.jar")).collect();
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/CuratorPeer.java");
        let mut java = Command::new("java");
        java.args(["-Xmx128m", "-cp", &classpath.join(":"), source, &format!("127.0.0.1:{port}")]);
        Peer::spawn("Curator (java)", &mut java)
    }

    /// Sends one command and returns its answer. Panics, naming the peer, when the answer
    /// does not come within a minute or the peer has exited.
    pub async fn ask(&mut self, command: &str) -> String {
        let sent = self.to.write_all(format!("{command}\n").as_bytes()).await;
        sent.unwrap_or_else(|e| panic!("{} took no command `{command}`: {e}", self.what));
        match tokio::time::timeout(ANSWER_BOUND, self.from.next_line()).await {
            Ok(Ok(Some(answer))) => answer,
            Ok(Ok(None)) => panic!("{} exited instead of answering `{command}`", self.what),
            Ok(Err(e)) => panic!("{}'s answer to `{command}` is unreadable: {e}", self.what),
            Err(_) => panic!("{} did not answer `{command}` within {ANSWER_BOUND:?}", self.what),
        }
    }
}
