//! JSON Lines: one object per socket. The schema is in docs/json-schema.md.

use std::io::Write;

use serde::Serialize;

use super::OutputError;
use crate::filter::Filter;
use crate::holders::Holder;
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
    holders: &'a [Holder],
    peer_holders: &'a [Holder],
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
        holders: model.holders(s.inode),
        peer_holders: peer.map_or(&[], |p| model.holders(p)),
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
    }
}
