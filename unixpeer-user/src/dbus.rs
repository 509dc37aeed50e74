//! D-Bus names: which bus client a socket is, asked from the bus itself.
//!
//! A bus daemon (dbus-daemon, dbus-broker) knows each client connection
//! by a unique name (`:1.42`) and the well-known names it owns, and tells
//! anyone who asks which process opened a name
//! (`org.freedesktop.DBus.GetConnectionUnixProcessID`). The model knows
//! which sockets the daemon accepted on its listening socket and which
//! process holds each client end. The two are joined on the pid: where a
//! process has exactly one connection to a bus, its socket gets that
//! connection's names. A process with several connections to one bus is
//! left unnamed there rather than guessed at (the bus does not say which
//! socket a name arrived on), and said so with `-v`.
//!
//! Everything here is bounded by one deadline: a slow, hung or vanished
//! bus costs the snapshot at most that long, and its sockets stay
//! unnamed.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Model, SockName, Status};

/// A bus client's names, on its end of the connection to the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BusLabel {
    /// The bus's socket name, as the rest of the output shows it.
    pub(crate) bus: Arc<str>,
    pub(crate) unique_name: String,
    /// Well-known names the connection owns, sorted.
    pub(crate) names: Vec<String>,
}

impl BusLabel {
    /// ` (:1.42 org.example.Foo)`, escaped: bus names are restricted by
    /// the specification, but the bus is just another process.
    pub(crate) fn cell(&self) -> String {
        let mut s = format!(" ({}", crate::output::escape::escaped(&self.unique_name));
        for n in &self.names {
            s.push(' ');
            s.push_str(&crate::output::escape::escaped(n));
        }
        s.push(')');
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbusError {
    #[error("cannot connect to {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} did not accept us as a client")]
    Refused {
        path: String,
        #[source]
        source: zbus::Error,
    },
    #[error("{path} did not answer within {timeout:?}")]
    Timeout { path: String, timeout: Duration },
}

/// A bus daemon's listening socket and the clients connected to it.
#[derive(Debug)]
struct Bus {
    name: SockName,
    /// As the output names it.
    shown: Arc<str>,
    /// Where we can reach it: through the daemon's root, so that a bus in
    /// a container's mount namespace is that bus and not ours.
    reach: PathBuf,
    /// The listening socket's owner: a session bus lets in only its user.
    uid: Option<u32>,
    /// Client socket inode and the pids holding it.
    clients: Vec<(u64, Vec<u32>)>,
}

/// Commands that are bus daemons (as the kernel truncates them).
fn is_bus_daemon(comm: &[u8]) -> bool {
    comm == b"dbus-daemon" || comm.starts_with(b"dbus-broker")
}

/// Every path-named listening socket a bus daemon holds, with the clients
/// of the sockets it accepted there (an accepted socket carries its
/// listener's name).
fn find_buses(model: &Model) -> Vec<Bus> {
    let mut buses: Vec<Bus> = Vec::new();
    for s in model.sockets() {
        let Some(SockName::Path(path)) = &s.name else { continue };
        let Some(daemon) = model.holders(s.inode).iter().find(|h| is_bus_daemon(h.comm.as_bytes())) else {
            continue;
        };
        if model.status(s) != Status::Listening {
            continue;
        }
        let Some(relative) = path.strip_prefix(b"/") else { continue };
        let name = SockName::path(path);
        buses.push(Bus {
            shown: Arc::from(name.to_string()),
            name,
            reach: PathBuf::from(format!("/proc/{}/root", daemon.pid)).join(OsStr::from_bytes(relative)),
            uid: s.uid,
            clients: Vec::new(),
        });
    }
    if buses.is_empty() {
        return buses;
    }
    for s in model.sockets() {
        let Some(client) = s.peer_inode() else { continue };
        let Some(name) = &s.name else { continue };
        if !model.holders(s.inode).iter().any(|h| is_bus_daemon(h.comm.as_bytes())) {
            continue;
        }
        let Some(bus) = buses.iter_mut().find(|b| b.name == *name) else { continue };
        let pids: Vec<u32> = model.holders(client).iter().map(|h| h.pid).collect();
        if !pids.is_empty() {
            bus.clients.push((client, pids));
        }
    }
    buses
}

/// Connects as `uid` where we are root and the bus belongs to someone
/// else: a session bus admits only its owner, and it checks the
/// credentials the kernel took at connect().
fn connect_as(bus: &Bus) -> Result<(UnixStream, Option<u32>), DbusError> {
    let err = |source| DbusError::Connect { path: bus.shown.to_string(), source };
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let uid = bus.uid.filter(|&u| euid == 0 && u != 0);
    let Some(uid) = uid else {
        return UnixStream::connect(&bus.reach).map(|s| (s, None)).map_err(err);
    };
    // Opened as root: as the bus's user this thread could not look into
    // the daemon's /proc root (its gid differs, and ptrace rules apply).
    // connect() through the magic link reaches the same socket inode.
    let socket = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(&bus.reach)
        .map_err(err)?;
    let via = format!("/proc/self/fd/{}", socket.as_raw_fd());
    let connected = std::thread::spawn(move || {
        // The raw system call changes this thread's credentials only
        // (libc's setresuid would change every thread's), and the thread
        // ends right after; the saved uid stays 0 in any case.
        // SAFETY: plain system call with integer arguments.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, u32::MAX, uid, u32::MAX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        UnixStream::connect(via)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")));
    drop(socket);
    connected.map(|s| (s, Some(uid))).map_err(err)
}

/// (pid, unique name, well-known names) of each connection on a bus.
type BusAnswers = Vec<(u32, String, Vec<String>)>;

async fn ask(bus: &Bus) -> Result<BusAnswers, DbusError> {
    let (stream, uid) = connect_as(bus)?;
    let refused = |source| DbusError::Refused { path: bus.shown.to_string(), source };
    let mut builder = zbus::connection::Builder::unix_stream(stream);
    if let Some(uid) = uid {
        builder = builder.user_id(uid);
    }
    let conn = builder.build().await.map_err(refused)?;
    let proxy = zbus::fdo::DBusProxy::new(&conn).await.map_err(refused)?;
    let names = proxy.list_names().await.map_err(|e| refused(e.into()))?;
    let me = conn.unique_name().map(|n| n.to_string());
    let (unique, well_known): (Vec<_>, Vec<_>) = names.into_iter().partition(|n| n.starts_with(':'));
    // One call at a time: a local bus answers each in tens of
    // microseconds, and the caller's deadline bounds them all.
    let mut out: Vec<(u32, String, Vec<String>)> = Vec::with_capacity(unique.len());
    for name in &unique {
        if me.as_deref() == Some(name.as_str()) {
            continue;
        }
        // A client gone since ListNames has no pid any more.
        if let Ok(pid) = proxy.get_connection_unix_process_id(name.inner().clone()).await {
            out.push((pid, name.to_string(), Vec::new()));
        }
    }
    for name in &well_known {
        let Ok(owner) = proxy.get_name_owner(name.inner().clone()).await else { continue };
        if let Some(entry) = out.iter_mut().find(|e| e.1 == owner.as_str()) {
            entry.2.push(name.to_string());
        }
    }
    for entry in &mut out {
        entry.2.sort();
    }
    Ok(out)
}

/// Which client sockets the answers name: those whose holder has exactly
/// one connection to the bus and one unique name on it. Returns the
/// labels and how many clients stayed unnamed for lack of a single match.
fn join(bus: &Bus, answers: &[(u32, String, Vec<String>)]) -> (Vec<(u64, BusLabel)>, usize) {
    let mut labels = Vec::new();
    let mut unnamed = 0;
    let count_sockets = |pid: u32| bus.clients.iter().filter(|(_, pids)| pids.contains(&pid)).count();
    for (client, pids) in &bus.clients {
        let matches: Vec<&(u32, String, Vec<String>)> = answers.iter().filter(|a| pids.contains(&a.0)).collect();
        match matches.as_slice() {
            [one] if count_sockets(one.0) == 1 => labels
                .push((*client, BusLabel { bus: bus.shown.clone(), unique_name: one.1.clone(), names: one.2.clone() })),
            [] => {}
            _ => unnamed += 1,
        }
    }
    (labels, unnamed)
}

/// Every bus's answer, or why there are none; one deadline for all.
fn ask_all(buses: &[Bus], timeout: Duration) -> Result<Vec<Result<BusAnswers, DbusError>>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    Ok(rt.block_on(async {
        let mut answers = Vec::with_capacity(buses.len());
        for bus in buses {
            let answer = tokio::time::timeout_at(deadline, ask(bus)).await;
            answers.push(answer.unwrap_or_else(|_| Err(DbusError::Timeout { path: bus.shown.to_string(), timeout })));
        }
        answers
    }))
}

/// Names the model's bus clients, waiting at most `timeout` for all buses
/// together. Returns what to tell the user with `-v`.
pub fn label(model: &mut Model, timeout: Duration) -> Vec<String> {
    let buses = find_buses(model);
    if buses.is_empty() {
        return Vec::new();
    }
    // A runtime of its own on a thread of its own: the caller may be inside
    // one (the live capture's initial snapshot), where blocking on another
    // is refused.
    let answers = std::thread::scope(|scope| {
        scope.spawn(|| ask_all(&buses, timeout)).join().unwrap_or_else(|_| Err("the asking thread panicked".into()))
    });
    let answers = match answers {
        Ok(a) => a,
        Err(why) => return vec![format!("D-Bus names: {why}")],
    };
    let mut notes = Vec::new();
    for (bus, answer) in buses.iter().zip(answers) {
        match answer {
            Ok(answers) => {
                let (labels, unnamed) = join(bus, &answers);
                notes.push(format!(
                    "D-Bus names: {} clients of {} named{}",
                    labels.len(),
                    bus.shown,
                    if unnamed > 0 {
                        format!(", {unnamed} not (their process has several connections to it)")
                    } else {
                        String::new()
                    }
                ));
                for (inode, label) in labels {
                    model.set_bus_label(inode, label);
                }
            }
            Err(e) => notes.push(format!("D-Bus names: {}", crate::output::escape::error_chain(&e))),
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holders::{Comm, Holder, HolderMap};
    use crate::model::{KernelState, Socket};

    /// A bus at /run/bus with its listener (1) and three accepted
    /// connections (11, 12, 13 on the daemon's side) to clients 21 (pid
    /// 100) and 22, 23 (both pid 200).
    fn model() -> Model {
        let named = |inode, state, peer| {
            let mut s = Socket::sample(inode, state, peer);
            s.name = Some(SockName::path(b"/run/bus"));
            s.uid = Some(1000);
            s
        };
        let mut sockets = vec![named(1, KernelState::Listen, None)];
        let mut holders = HolderMap::default();
        let daemon = |fd| Holder::of(7, Comm::from("dbus-daemon"), Some(fd));
        holders.insert(1, [daemon(3)].into_iter().collect());
        for (server, client, pid) in [(11, 21, 100), (12, 22, 200), (13, 23, 200)] {
            sockets.push(named(server, KernelState::Established, Some(client)));
            sockets.push(Socket::sample(client, KernelState::Established, Some(server)));
            holders.insert(server, [daemon(server as i32)].into_iter().collect());
            holders.insert(client, [Holder::of(pid, Comm::from("client"), Some(3))].into_iter().collect());
        }
        Model::new(sockets, holders)
    }

    #[test]
    fn finds_the_bus_through_the_daemons_root_with_its_clients() {
        let buses = find_buses(&model());
        assert_eq!(buses.len(), 1, "{buses:?}");
        let bus = &buses[0];
        assert_eq!(&*bus.shown, "/run/bus");
        assert_eq!(bus.reach, PathBuf::from("/proc/7/root/run/bus"));
        assert_eq!(bus.uid, Some(1000));
        let mut clients = bus.clients.clone();
        clients.sort();
        assert_eq!(clients, vec![(21, vec![100]), (22, vec![200]), (23, vec![200])]);
    }

    #[test]
    fn names_only_a_process_with_one_connection() {
        let bus = &find_buses(&model())[0];
        let answers = vec![
            (100, ":1.4".to_owned(), vec!["org.example.A".to_owned()]),
            (200, ":1.5".to_owned(), Vec::new()),
            (200, ":1.6".to_owned(), Vec::new()),
            // A client the snapshot does not have (connected since).
            (300, ":1.7".to_owned(), Vec::new()),
        ];
        let (labels, unnamed) = join(bus, &answers);
        assert_eq!(
            labels,
            vec![(
                21,
                BusLabel {
                    bus: Arc::from("/run/bus"),
                    unique_name: ":1.4".into(),
                    names: vec!["org.example.A".into()]
                }
            )]
        );
        assert_eq!(unnamed, 2, "pid 200's two connections are not guessed at");
    }

    #[test]
    fn a_socket_no_daemon_holds_is_no_bus() {
        let mut m = model();
        m.set_all_holders(HolderMap::default());
        assert!(find_buses(&m).is_empty());
    }

    #[test]
    fn the_cell_escapes_what_the_bus_said() {
        let label =
            BusLabel { bus: Arc::from("/run/bus"), unique_name: ":1.4".into(), names: vec!["a\u{1b}[2J".into()] };
        assert_eq!(label.cell(), " (:1.4 a\\x1b[2J)");
    }
}
