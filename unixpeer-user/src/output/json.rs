//! JSON Lines: one object per socket. The schema is in docs/json-schema.md.

use std::io::Write;

use serde::Serialize;

use super::OutputError;
use crate::filter::Filter;
use crate::holders::{Comm, Holder};
use crate::identity::Container;
use crate::model::{KernelState, Model, Socket, Status};

#[derive(Serialize)]
struct SocketRecord<'a> {
    kind: &'static str,
    schema: u32,
    inode: u64,
    peer_inode: Option<u64>,
    #[serde(rename = "type")]
    sock_type: String,
    state: &'static str,
    path: Option<String>,
    netns: u64,
    holders: Holders<'a>,
    peer_holders: Holders<'a>,
    peer_path: Option<String>,
    peer_netns: Option<u64>,
    kernel_state: String,
    shutdown: u8,
    rqueue: Option<u32>,
    wqueue: Option<u32>,
    pending: Option<&'a [u64]>,
    backlog: Option<u32>,
    listener: Option<u64>,
    uid: Option<u32>,
    vfs: Option<Vfs>,
    /// Present only where a bus named the connection (`--json` asks it).
    #[serde(skip_serializing_if = "Option::is_none")]
    dbus: Option<Dbus<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_dbus: Option<Dbus<'a>>,
    /// What the socket carried so far, where a recording sampled it
    /// (`--at`): `bytes_sent`, `bytes_received`, `msgs_sent` and
    /// `msgs_received`, as on its close.
    #[serde(flatten)]
    traffic: Option<Carried>,
}

#[derive(Serialize)]
struct Carried {
    bytes_sent: u64,
    bytes_received: u64,
    msgs_sent: u64,
    msgs_received: u64,
}

#[derive(Serialize)]
struct Dbus<'a> {
    bus: &'a str,
    unique_name: &'a str,
    names: &'a [String],
}

impl<'a> Dbus<'a> {
    fn of(model: &'a Model, inode: Option<u64>) -> Option<Self> {
        let l = model.bus_label(inode?)?;
        Some(Dbus { bus: &l.bus, unique_name: &l.unique_name, names: &l.names })
    }
}

/// Holders, each with who its process is, serialized in place: no list
/// is built per socket.
struct Holders<'a> {
    model: &'a Model,
    list: &'a [Holder],
}

/// A holder with who its process is.
#[derive(Serialize)]
struct HolderRecord<'a> {
    pid: u32,
    fd: Option<u32>,
    comm: Comm,
    user: Option<&'a str>,
    unit: Option<&'a str>,
    container: Option<&'a Container>,
}

impl Serialize for Holders<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.list.iter().map(|h| {
            let id = self.model.identity(h.pid);
            HolderRecord {
                pid: h.pid,
                fd: h.fd,
                comm: h.comm,
                user: id.and_then(|i| i.user.as_deref()),
                unit: id.and_then(|i| i.unit.as_deref()),
                container: id.and_then(|i| i.container.as_ref()),
            }
        }))
    }
}

#[derive(Serialize)]
struct Vfs {
    dev: u32,
    ino: u32,
}

pub fn write(out: &mut impl Write, model: &Model, filter: &Filter) -> Result<(), OutputError> {
    for socket in model.sockets() {
        if !filter.matches(model, socket.inode, socket.peer_inode()) {
            continue;
        }
        serde_json::to_writer(&mut *out, &record(model, socket))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn record<'a>(model: &'a Model, s: &'a Socket) -> SocketRecord<'a> {
    let status = model.status(s);
    let listening = status == Status::Listening;
    let peer = s.peer_inode();
    let peer_socket = peer.and_then(|p| model.get(p));
    SocketRecord {
        kind: "socket",
        schema: super::JSON_SCHEMA,
        inode: s.inode,
        peer_inode: peer,
        sock_type: s.sock_type.to_string(),
        state: status.as_str(),
        path: s.name.as_ref().map(ToString::to_string),
        netns: s.netns,
        holders: Holders { model, list: model.holders(s.inode) },
        peer_holders: Holders { model, list: peer.map_or(&[], |p| model.holders(p)) },
        peer_path: peer_socket.and_then(|p| p.name.as_ref()).map(ToString::to_string),
        peer_netns: peer_socket.map(|p| p.netns),
        kernel_state: match s.state {
            KernelState::Established => "established".into(),
            KernelState::Listen => "listen".into(),
            KernelState::Close => "close".into(),
            KernelState::Other(n) => n.to_string(),
        },
        shutdown: s.shutdown,
        rqueue: s.rqlen.filter(|_| !listening).map(|q| q.0),
        wqueue: s.rqlen.filter(|_| !listening).map(|q| q.1),
        pending: listening.then_some(&s.icons[..]),
        backlog: s.rqlen.filter(|_| listening).map(|q| q.1),
        listener: model.listener_of(s.inode),
        uid: s.uid,
        vfs: s.vfs.map(|v| Vfs { dev: v.dev, ino: v.ino }),
        dbus: Dbus::of(model, Some(s.inode)),
        peer_dbus: Dbus::of(model, peer),
        traffic: model.traffic(s.inode).map(|t| Carried {
            bytes_sent: t.bytes_sent,
            bytes_received: t.bytes_received,
            msgs_sent: t.msgs_sent,
            msgs_received: t.msgs_received,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, Runtime};

    #[test]
    fn holders_carry_who_their_process_is_exactly() {
        let holder = |pid| [Holder { pid, comm: "app".into(), fd: Some(3) }].into_iter().collect();
        let sock = |inode, peer| Socket::sample(inode, KernelState::Established, Some(peer));
        let mut model =
            Model::new(vec![sock(1, 2), sock(2, 1)], [(1, holder(10)), (2, holder(20))].into_iter().collect());
        let unit =
            Identity { uid: Some(0), user: Some("root".into()), unit: Some("a\u{1b}.service".into()), container: None };
        model.processes_mut().learn(10, unit);
        let lxc = Container { runtime: Runtime::Lxc, id: "web".into(), name: None, pod_uid: None, qos: None };
        model.processes_mut().learn(20, Identity { container: Some(lxc), ..Identity::default() });
        let mut out = Vec::new();
        write(&mut out, &model, &Filter::default()).unwrap();
        let first: serde_json::Value = serde_json::from_slice(out.split(|&b| b == b'\n').next().unwrap()).unwrap();
        assert_eq!(
            first["holders"],
            serde_json::json!([{"pid": 10, "fd": 3, "comm": "app", "user": "root", "unit": "a\u{1b}.service", "container": null}])
        );
        assert_eq!(
            first["peer_holders"][0]["container"],
            serde_json::json!({"runtime": "lxc", "id": "web", "pod_uid": null, "qos": null})
        );
        assert_eq!(first["peer_holders"][0]["user"], serde_json::Value::Null);
    }
}
