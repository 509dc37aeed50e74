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
    holders: Vec<HolderRecord<'a>>,
    peer_holders: Vec<HolderRecord<'a>>,
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

fn holders<'a>(model: &'a Model, holders: &[Holder]) -> Vec<HolderRecord<'a>> {
    holders
        .iter()
        .map(|h| {
            let id = model.identity(h.pid);
            HolderRecord {
                pid: h.pid,
                fd: h.fd,
                comm: h.comm,
                user: id.and_then(|i| i.user.as_deref()),
                unit: id.and_then(|i| i.unit.as_deref()),
                container: id.and_then(|i| i.container.as_ref()),
            }
        })
        .collect()
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
        holders: holders(model, model.holders(s.inode)),
        peer_holders: holders(model, peer.map_or(&[], |p| model.holders(p))),
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
    }
}
