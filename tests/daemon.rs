//! Issue 19: `run -d` and `run -u -d` as the systemd unit runs them (`Type=forking`). `run -d`
//! must return 0 once the daemon listens, every time (Pingora's own wait let the daemon's
//! early SIGUSR1 kill the parent: 8 starts in 20); `run -u -d` is the whole reload and must
//! return 0 once the new process holds the sockets, however quickly reloads follow each other.
//! 200 starts in a row, then 50 reloads back to back under signed requests, none failing.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const GITHUB: &str = "name: github\npreset: github\nsecrets: [\"daemon-secret\"]\n";

/// A config the way the unit runs it: pid file, upgrade socket (and the
/// `daemon_wait_for_ready` an older README asked for, now ignored).
struct Daemon {
    dir: tempfile::TempDir,
    port: u16,
    admin: u16,
    /// Every daemon pid seen, killed on drop (a failing test leaves nothing behind).
    pids: std::cell::RefCell<Vec<u32>>,
}

impl Daemon {
    fn new() -> Daemon {
        let dir = Server::prepare(&[("github.yaml", GITHUB)]);
        let (port, admin) = (free_port(), free_port());
        let conf = format!(
            "listen:\n  - addr: 127.0.0.1:{port}\nadmin: 127.0.0.1:{admin}\nfilters: {filters}/\n\
             sinks:\n  spool: {{ type: spool, dir: {spool}/ }}\n\
             pingora: {{ threads: 2, pid_file: {pid}, upgrade_sock: {sock}, \
             daemon_wait_for_ready: true, grace_period_seconds: 30, \
             graceful_shutdown_timeout_seconds: 5 }}\n",
            filters = dir.path().join("filters").display(),
            spool = dir.path().join("spool").display(),
            pid = dir.path().join("pid").display(),
            sock = dir.path().join("upgrade.sock").display(),
        );
        std::fs::write(dir.path().join("portcullis.yaml"), conf).unwrap();
        Daemon {
            dir,
            port,
            admin,
            pids: Default::default(),
        }
    }

    /// `portcullis run -d [extra] -c …`: the parent's exit code (None: it hung), and the pid
    /// the daemon wrote.
    fn run(&self, extra: &[&str]) -> (Option<i32>, Option<u32>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log.txt"))
            .unwrap();
        let mut parent = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "-d"])
            .args(extra)
            .arg("-c")
            .arg(self.dir.path().join("portcullis.yaml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let code = loop {
            if let Some(status) = parent.try_wait().unwrap() {
                // A parent killed by a signal has no code: -signal, so the assertion names it.
                break Some(status.code().unwrap_or_else(|| {
                    -std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
                }));
            }
            if Instant::now() > deadline {
                let _ = parent.kill();
                let _ = parent.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let pid = self.pid();
        self.pids
            .borrow_mut()
            .extend(pid.filter(|p| *p != std::process::id()));
        (code, pid)
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("pid")
    }

    fn ready(&self) -> bool {
        try_request(
            self.admin,
            b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .is_ok_and(|r| r.status == 200)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log.txt")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for pid in self.pids.borrow().iter() {
            kill(*pid, "KILL");
        }
    }
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Exited: no such process, or a zombie (a daemon's parent is init, which reaps when it can)
/// whose descriptors are closed (its leader turns zombie before its other threads are done).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
                && std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map_or(true, |mut fds| fds.next().is_none())
        }
    }
}

fn wait_gone(pid: u32, daemon: &Daemon) {
    wait_exit(pid, daemon, false);
}

/// [`wait_gone`], and its listening sockets released: a zombie leader's `/proc/PID/fd` can
/// read empty while its other threads still hold them (the next start would find the ports
/// taken).
fn wait_released(pid: u32, daemon: &Daemon) {
    wait_exit(pid, daemon, true);
}

fn wait_exit(pid: u32, daemon: &Daemon, ports: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    while !(gone(pid) && (!ports || (free(daemon.port) && free(daemon.admin)))) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} did not exit; log tail:\n{}",
            tail(&daemon.log())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn run_d_returns_once_the_daemon_is_ready_200_times_in_a_row() {
    let daemon = Daemon::new();
    for i in 0..200 {
        let (code, pid) = daemon.run(&[]);
        assert_eq!(
            code,
            Some(0),
            "start {i}: `run -d` exits 0 once the daemon is ready; log tail:\n{}",
            tail(&daemon.log())
        );
        let pid = pid.expect("the daemon wrote its pid file");
        assert!(!gone(pid), "start {i}: the pid file names the live daemon");
        for port in [daemon.port, daemon.admin] {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
                "start {i}: listening on {port} when `run -d` returns"
            );
        }
        wait_until("the daemon is ready", || daemon.ready());
        kill(pid, "INT");
        wait_released(pid, &daemon);
    }
    // An upgrade with nothing running to take the sockets from fails at once, and says so.
    let (code, _) = daemon.run(&["-u"]);
    assert_eq!(code, Some(1));
    assert!(daemon
        .log()
        .contains("no running gateway to take the sockets from"));
    // A stale pid file whose number now names another program: that program is not signalled.
    std::fs::write(daemon.pid_file(), std::process::id().to_string()).unwrap();
    let (code, _) = daemon.run(&["-u"]);
    assert_eq!(code, Some(1));
    assert!(daemon
        .log()
        .contains("names a process that is not portcullis"));
    assert!(
        !daemon.log().contains("panicked"),
        "{}",
        tail(&daemon.log())
    );
}

#[test]
fn fifty_reloads_in_a_row_under_load_fail_no_request_and_lose_no_event() {
    let daemon = Daemon::new();
    let (code, pid) = daemon.run(&[]);
    assert_eq!(code, Some(0), "{}", tail(&daemon.log()));
    let mut current = pid.unwrap();
    wait_until("the daemon is ready", || daemon.ready());
    let streams: Vec<Traffic> = ["a", "b", "c"]
        .iter()
        .map(|p| Traffic::start_named(daemon.port, "/webhook/github", GITHUB, p))
        .collect();
    streams[0].wait_for(202, 10);

    // Back to back, as `systemctl reload` would run them: `run -u -d` is the whole reload (it
    // sends the running process its SIGQUIT) and returns once the new process holds the
    // sockets; nothing waits for the old one to drain (Pingora keeps it accepting 5 s more).
    let mut old = Vec::new();
    for i in 0..50 {
        let (code, pid) = daemon.run(&["-u"]);
        assert_eq!(
            code,
            Some(0),
            "reload {i}: `run -u -d` exits 0; log tail:\n{}",
            tail(&daemon.log())
        );
        let new = pid.expect("the new daemon wrote its pid file");
        assert_ne!(
            new, current,
            "reload {i}: the pid file names the new process"
        );
        old.push(current);
        current = new;
        // The load goes on through the reloads.
        let seen = streams[i % 3].count(202);
        streams[i % 3].wait_for(202, seen + 3);
    }
    for pid in old {
        wait_gone(pid, &daemon);
    }
    assert!(!gone(current), "the last process serves");
    wait_until("the last process is ready", || daemon.ready());
    let seen = streams[0].count(202);
    streams[0].wait_for(202, seen + 10);

    let sent: Vec<Sent> = streams.into_iter().flat_map(Traffic::finish).collect();
    let spooled = spool_lines(&daemon.dir.path().join("spool"))
        .iter()
        .map(|l| l["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_all_accepted_once(sent, spooled, "reloads");
    assert!(
        !daemon.log().contains("panicked"),
        "{}",
        tail(&daemon.log())
    );
}
