//! Which processes serve an engine: the one listening on its URL, and its
//! descendants (llama-server's router runs one child per model, Ollama a
//! runner per model, vLLM its workers). NVML's per-process GPU memory of
//! these is an engine's measured footprint (see `run_load`).
//!
//! Linux `/proc` only: `/proc/net/{tcp,tcp6,unix}` name the listening
//! socket's inode, `/proc/<pid>/fd` the process holding it, and
//! `/proc/<pid>/stat` each process's parent.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::http::Endpoint;

/// The pids of the processes listening on `endpoint`, and all their
/// descendants; empty when none is found (another user's process without
/// the right to read its fds, another pid namespace).
pub fn serving_pids(endpoint: &Endpoint) -> HashSet<u32> {
    let inodes = listening_inodes(endpoint);
    if inodes.is_empty() {
        return HashSet::new();
    }
    let roots = holders(&inodes);
    with_descendants(&roots)
}

/// Socket inodes listening on `endpoint`.
fn listening_inodes(endpoint: &Endpoint) -> HashSet<u64> {
    let mut out = HashSet::new();
    match endpoint {
        Endpoint::Tcp { addr, .. } => {
            let Some(port) = addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()) else {
                return out;
            };
            for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
                let Ok(text) = std::fs::read_to_string(table) else { continue };
                // sl local_address rem_address st ... uid timeout inode
                for line in text.lines().skip(1) {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                        continue;
                    };
                    let listens = *state == "0A";
                    let on_port = local
                        .rsplit_once(':')
                        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                        .is_some_and(|p| p == port);
                    if listens
                        && on_port
                        && let Ok(i) = inode.parse::<u64>()
                    {
                        out.insert(i);
                    }
                }
            }
        }
        Endpoint::Unix(path) => {
            let Ok(text) = std::fs::read_to_string("/proc/net/unix") else {
                return out;
            };
            // Num RefCount Protocol Flags Type St Inode Path
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let (Some(inode), Some(p)) = (f.get(6), f.get(7))
                    && Path::new(p) == path.as_path()
                    && let Ok(i) = inode.parse::<u64>()
                {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Pids holding one of `inodes` open.
fn holders(inodes: &HashSet<u64>) -> HashSet<u32> {
    let mut out = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let t = target.to_string_lossy();
            if let Some(i) = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                && inodes.contains(&i)
            {
                out.insert(pid);
                break;
            }
        }
    }
    out
}

/// `roots` and every process below them.
pub fn with_descendants(roots: &HashSet<u32>) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = HashSet::new();
    let mut stack: Vec<u32> = roots.iter().copied().collect();
    while let Some(pid) = stack.pop() {
        if out.insert(pid)
            && let Some(kids) = children.get(&pid)
        {
            stack.extend(kids);
        }
    }
    out
}

/// The parent pid from `/proc/<pid>/stat` (the field after the command,
/// which may itself hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_listener_and_its_children_are_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let ep = Endpoint::parse(&format!("http://127.0.0.1:{port}"), false).expect("url");
        let pids = serving_pids(&ep);
        assert!(pids.contains(&std::process::id()), "{pids:?}");
        assert!(pids.contains(&child.id()), "the listener's child is included: {pids:?}");
        let _ = child.kill();
        let _ = child.wait();
        drop(l);
        assert!(serving_pids(&ep).is_empty(), "nobody listens any more");
    }

    #[test]
    fn a_unix_socket_listener_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("engine.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let ep = Endpoint::parse(&format!("unix:{}", sock.display()), false).expect("url");
        assert!(serving_pids(&ep).contains(&std::process::id()));
    }
}
