//! `run -d`: a parent that returns once the daemon holds its listening sockets, and
//! `run -u -d` as one whole graceful reload (what the systemd unit's `ExecReload=` runs).
//!
//! Pingora's own wait (`daemon_wait_for_ready`, 0.9.1) is not used, for three reasons found
//! by `tests/daemon.rs`: its parent installs its SIGUSR1 listener after forking, so a quick
//! daemon's signal killed it (8 starts in 20); the daemon signals as its bootstrap *begins*,
//! before an upgrading process has the sockets, so `ExecReload=` returned while the handover
//! was still to come; and a second reload in that window made the next process bind the
//! upgrade socket under the first one, which then received nothing: every process exited.
//!
//! Here the parent forks before Pingora daemonizes and keeps the read end of a pipe. The
//! daemon writes one byte once it holds the sockets: bootstrap done (an upgrade's received)
//! and every address listening ([`sockets_held`], from [`crate::lifecycle::SocketsHeld`]);
//! end of file without it means the daemon died. With
//! `-u` the parent also sends the running process (from the pid file) its SIGQUIT once the
//! new process listens on the upgrade socket, so the handover is not a second, racing step.
//! Exit 0 means the new process serves; anything else is a failed start or reload, the
//! running process (if any) untouched unless the handover had begun.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The daemon's write end of the parent's pipe, until [`sockets_held`] uses it.
static READY: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// What the daemon's parent waits for.
pub struct Wait<'a> {
    pub pid_file: &'a str,
    pub upgrade_sock: &'a str,
    pub upgrade: bool,
    pub timeout: Duration,
}

/// Forks: in the parent, waits for the daemon and exits the process (never returns); in the
/// child, returns and Pingora daemonizes it. Call right before `Server::run`, single-threaded.
pub fn fork_and_wait(wait: Wait) {
    // The process whose sockets an upgrade takes: it must be running, or nothing hands over.
    let old = if wait.upgrade {
        match read_pid(wait.pid_file).filter(|pid| alive(*pid)) {
            // A stale pid file's number may since belong to another program: never signal it.
            Some(pid) if comm(pid) != comm(std::process::id() as i32) => {
                tracing::error!(
                    pid,
                    pid_file = wait.pid_file,
                    "upgrade refused: the pid file names a process that is not portcullis"
                );
                std::process::exit(1);
            }
            Some(pid) => Some(pid),
            None => {
                tracing::error!(
                    pid_file = wait.pid_file,
                    "upgrade refused: no running gateway to take the sockets from (start it with `run -d`)"
                );
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    // A socket file left there is stale (or a racing upgrade's, which this one would break
    // anyway): once it is gone, the file's appearing means the new process listens.
    if wait.upgrade {
        let _ = std::fs::remove_file(wait.upgrade_sock);
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        tracing::error!("not starting: pipe: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    // SAFETY: both descriptors are fresh and owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    pingora_timeout::fast_timeout::pause_for_fork();
    // SAFETY: no other thread runs yet (the contract of this function, as of Pingora's fork).
    let pid = unsafe { libc::fork() };
    pingora_timeout::fast_timeout::unpause();
    match pid {
        -1 => {
            tracing::error!("not starting: fork: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        0 => {
            drop(read);
            *READY.lock().unwrap_or_else(|e| e.into_inner()) = Some(write.into());
        }
        _ => {
            drop(write);
            std::process::exit(parent(std::fs::File::from(read), &wait, old));
        }
    }
}

/// Called by the daemon once its bootstrap holds the listening sockets: releases the parent.
pub fn sockets_held() {
    if let Some(mut ready) = READY.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = std::io::Write::write_all(&mut ready, b"R");
    }
}

fn parent(mut ready: std::fs::File, wait: &Wait, old: Option<i32>) -> i32 {
    let deadline = Instant::now() + wait.timeout;
    let mut quit_sent = false;
    loop {
        if old.is_some() && !quit_sent && std::path::Path::new(wait.upgrade_sock).exists() {
            // The new process listens on the upgrade socket: the old one may hand over now.
            let old = old.unwrap_or_default();
            // SAFETY: kill(2) with a pid read from the pid file and a valid signal.
            if unsafe { libc::kill(old, libc::SIGQUIT) } != 0 {
                tracing::error!(
                    old,
                    "upgrade: SIGQUIT to the running gateway failed: {}",
                    std::io::Error::last_os_error()
                );
            }
            quit_sent = true;
        }
        let mut fd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&ready),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a bounded timeout.
        let n = unsafe { libc::poll(&mut fd, 1, 20) };
        if n > 0 {
            let mut byte = [0u8; 1];
            return match ready.read(&mut byte) {
                Ok(1) => {
                    let pid = read_pid(wait.pid_file).unwrap_or_default();
                    tracing::info!(
                        pid,
                        upgrade = wait.upgrade,
                        "the daemon holds its sockets and serves"
                    );
                    0
                }
                _ if !quit_sent => {
                    tracing::error!("the daemon exited before serving (its log above says why)");
                    1
                }
                _ => {
                    tracing::error!(
                        "upgrade failed: the new process exited after the running one began handing over; see the log"
                    );
                    1
                }
            };
        }
        if Instant::now() > deadline {
            tracing::error!(timeout = ?wait.timeout, "the daemon did not hold its sockets in time");
            return 1;
        }
    }
}

/// The process's command name (`/proc/PID/comm`): the binary's file name.
fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()
}

fn read_pid(path: &str) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Running: exists, may be signalled, and is not a zombie awaiting its reaper.
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let exists = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
    exists
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            !stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
}

/// Whether every address has a socket in LISTEN state (`/proc/net/tcp`, `tcp6`): read-only,
/// so it cannot take a port from the listener about to bind it. `run` checked the ports free
/// before starting, so a listener there is this process's. A table that cannot be read
/// (no /proc, no IPv6) cannot tell: the address counts as listening, trusting the bind.
pub fn listening(addrs: &[std::net::SocketAddr]) -> bool {
    let table = |name| std::fs::read_to_string(format!("/proc/net/{name}")).ok();
    let (v4, v6) = (table("tcp"), table("tcp6"));
    addrs.iter().all(|addr| {
        let (Some(table), ip) = (match addr.ip() {
            std::net::IpAddr::V4(ip) => (&v4, format!("{:08X}", u32::from_ne_bytes(ip.octets()))),
            std::net::IpAddr::V6(ip) => (
                &v6,
                ip.octets()
                    .chunks(4)
                    .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                    .collect(),
            ),
        }) else {
            return true;
        };
        let local = format!("{ip}:{:04X}", addr.port());
        table.lines().skip(1).any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some(local.as_str()) && fields.nth(1) == Some("0A")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_listener_is_seen_and_a_free_port_is_not() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0").ok();
        let mut addrs = vec![v4.local_addr().unwrap()];
        addrs.extend(v6.as_ref().map(|l| l.local_addr().unwrap()));
        assert!(listening(&addrs));
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!listening(&[free]));
        // Bound but not listening is not enough.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(!listening(&[socket.local_addr().unwrap()]));
    }
}
