//! Who a process is beyond its pid and command: its user, its systemd unit
//! and its container, from `/proc/PID/status`, `/proc/PID/cgroup` and
//! `/etc/passwd`.
//!
//! Resolved once per process and shared (`Arc`) by every holder of it,
//! since `Holder` must stay small; again after an exec (a service manager
//! moves its child into the unit's cgroup between fork and exec), and
//! inherited at fork. A recording carries what was resolved: the processes
//! are gone when it is replayed, and their pids may name others by then.

use std::path::PathBuf;
use std::sync::Arc;

use foldhash::{HashMap, HashSet};
use serde::{Deserialize, Serialize};

mod cgroup;
mod names;
mod passwd;

pub(crate) use cgroup::{Placement, path_of, placement};
use passwd::Passwd;

/// One process's identity; each part is `None` when it is not known or
/// the process has none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The real uid, as events carry it.
    #[serde(default)]
    pub(crate) uid: Option<u32>,
    #[serde(default)]
    pub(crate) user: Option<Box<str>>,
    #[serde(default)]
    pub(crate) unit: Option<Box<str>>,
    #[serde(default)]
    pub(crate) container: Option<Container>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub(crate) runtime: Runtime,
    /// The runtime's id (64 hex digits), or an LXC container's name.
    pub(crate) id: Box<str>,
    /// The name docker or podman gave it, where their state says
    /// (`names.rs`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<Box<str>>,
    #[serde(default)]
    pub(crate) pod_uid: Option<Box<str>>,
    #[serde(default)]
    pub(crate) qos: Option<Qos>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    #[serde(rename = "cri-o")]
    Crio,
    Lxc,
    /// A Kubernetes container whose cgroup (the kubelet's cgroupfs driver)
    /// does not say which CRI runtime runs it.
    Cri,
}

impl Runtime {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Containerd => "containerd",
            Self::Crio => "cri-o",
            Self::Lxc => "lxc",
            Self::Cri => "cri",
        }
    }
}

/// A pod's Kubernetes QoS class, spelt as Kubernetes does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

impl Identity {
    /// For people: the container if any, else the unit, escaped.
    pub(crate) fn tag(&self) -> Option<String> {
        let mut out = Vec::new();
        self.push_tag(&mut out).then(|| String::from_utf8_lossy(&out).into_owned())
    }

    /// `tag` appended to a line being built, without allocating (event
    /// lines); false when there is nothing to show.
    pub(crate) fn push_tag(&self, out: &mut Vec<u8>) -> bool {
        match (&self.container, &self.unit) {
            (Some(c), _) => {
                out.extend_from_slice(c.runtime.as_str().as_bytes());
                out.push(b':');
                // People know a container by its name, when it has one.
                let end = c.id.char_indices().nth(12).map_or(c.id.len(), |(i, _)| i);
                crate::output::escape::push(out, c.name.as_deref().unwrap_or(&c.id[..end]));
            }
            (None, Some(u)) => crate::output::escape::push(out, u),
            (None, None) => return false,
        }
        true
    }
}

/// Reads identities of live processes.
#[derive(Debug)]
pub(crate) struct Resolver {
    proc: PathBuf,
    users: Passwd,
    names: names::ContainerNames,
}

impl Resolver {
    pub(crate) fn new(proc: impl Into<PathBuf>, passwd: &std::path::Path) -> Self {
        // Without /etc/passwd users are shown by uid only.
        let users = std::fs::read(passwd).map(|b| Passwd::parse(&b)).unwrap_or_default();
        Self { proc: proc.into(), users, names: names::ContainerNames::default() }
    }

    /// `None` when the process is gone or was never visible.
    pub(crate) fn resolve(&self, pid: u32) -> Option<Identity> {
        let dir = self.proc.join(pid.to_string());
        let status = std::fs::read(dir.join("status")).ok()?;
        let uid = real_uid(&status);
        let Placement { unit, mut container } =
            std::fs::read(dir.join("cgroup")).ok().as_deref().and_then(path_of).map(placement).unwrap_or_default();
        if let Some(c) = &mut container {
            c.name = self.names.name(c.runtime, &c.id);
        }
        Some(Identity { uid, user: uid.and_then(|u| self.users.name(u)).map(Into::into), unit, container })
    }
}

/// The first of `Uid:`'s four (real, effective, saved, filesystem).
fn real_uid(status: &[u8]) -> Option<u32> {
    let line = status.split(|&b| b == b'\n').find_map(|l| l.strip_prefix(b"Uid:"))?;
    std::str::from_utf8(line).ok()?.split_whitespace().next()?.parse().ok()
}

/// Exited processes whose identity is still at hand: lines about their
/// sockets may come after the exit (a close inferred at exit, the second
/// close of a pair).
const EXITED: usize = 4096;

/// pid -> identity, for every process the model has met.
#[derive(Clone, Debug, Default)]
pub struct Processes {
    by_pid: HashMap<u32, Arc<Identity>>,
    /// The previous generation of exited processes, dropped whole when
    /// full: no per-exit work to keep it bounded.
    exited: HashMap<u32, Arc<Identity>>,
    /// Exec'd since they were resolved.
    stale: HashSet<u32>,
    /// None when replaying: the recorded identities are all there is.
    resolver: Option<Arc<Resolver>>,
    /// Resolved from /proc since `take_learnt`: what a recording must add.
    learnt: Vec<u32>,
}

impl Processes {
    /// Identities of the running system's processes.
    pub(crate) fn from_proc() -> Self {
        Self::with(Resolver::new("/proc", std::path::Path::new("/etc/passwd")))
    }

    pub(crate) fn with(resolver: Resolver) -> Self {
        Self { resolver: Some(Arc::new(resolver)), ..Self::default() }
    }

    /// The identity, shared, for what outlives this map (connection spans).
    pub(crate) fn shared(&self, pid: u32) -> Option<Arc<Identity>> {
        self.by_pid.get(&pid).or_else(|| self.exited.get(&pid)).cloned()
    }

    pub(crate) fn get(&self, pid: u32) -> Option<&Identity> {
        self.by_pid.get(&pid).or_else(|| self.exited.get(&pid)).map(|i| &**i)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_pid.len() + self.exited.len()
    }

    /// Resolves `pid` unless known and current. A process that cannot be
    /// read (gone before its event was handled) keeps what it inherited,
    /// or is remembered as unknown: one attempt, not one per event.
    pub(crate) fn observe(&mut self, pid: u32) {
        let Some(resolver) = &self.resolver else { return };
        // Nearly always known and current: one lookup.
        if self.by_pid.contains_key(&pid) && (self.stale.is_empty() || !self.stale.remove(&pid)) {
            return;
        }
        match resolver.resolve(pid) {
            Some(identity) => {
                if identity != Identity::default() {
                    self.learnt.push(pid);
                }
                self.by_pid.insert(pid, Arc::new(identity));
            }
            // Gone. One that exited is still what it was: the kernel
            // reports an exit before it closes the process's fds, so its
            // last closes come after. Replay reads the same from `exited`.
            None if self.exited.contains_key(&pid) => {}
            None => {
                self.by_pid.entry(pid).or_default();
            }
        }
    }

    /// The snapshot's processes, resolved now.
    pub(crate) fn resolve_all(&mut self, pids: impl IntoIterator<Item = u32>) {
        let Some(resolver) = self.resolver.clone() else { return };
        for pid in pids {
            self.by_pid.entry(pid).or_insert_with(|| Arc::new(resolver.resolve(pid).unwrap_or_default()));
        }
    }

    /// A child starts in its parent's cgroups, as its parent's user.
    pub(crate) fn fork(&mut self, parent: u32, child: u32) {
        if let Some(id) = self.by_pid.get(&parent).cloned() {
            self.by_pid.insert(child, id);
            self.stale.remove(&child);
        }
    }

    /// An exec (or another rename): read the process again when next met.
    pub(crate) fn exec(&mut self, pid: u32) {
        if self.resolver.is_some() && self.by_pid.contains_key(&pid) {
            self.stale.insert(pid);
        }
    }

    pub(crate) fn exit(&mut self, pid: u32) {
        self.stale.remove(&pid);
        if let Some(id) = self.by_pid.remove(&pid) {
            if self.exited.len() >= EXITED {
                self.exited.clear();
            }
            self.exited.insert(pid, id);
        }
    }

    /// What a recording says a process was.
    pub(crate) fn learn(&mut self, pid: u32, identity: Identity) {
        self.stale.remove(&pid);
        self.by_pid.insert(pid, Arc::new(identity));
    }

    /// Takes `other`'s identities (a fresh snapshot's), and its way of
    /// resolving more if this has none.
    pub(crate) fn adopt(&mut self, other: &Processes) {
        for (pid, id) in &other.by_pid {
            self.by_pid.insert(*pid, id.clone());
            self.stale.remove(pid);
        }
        if self.resolver.is_none() {
            self.resolver.clone_from(&other.resolver);
        }
    }

    /// Forgets processes `keep` refuses (after a resync: those holding
    /// nothing any more, whose exit may have been lost). Live only: what a
    /// replay forgot it could not read again, and the live model read it
    /// again when it met the process.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        if self.resolver.is_none() {
            return;
        }
        self.by_pid.retain(|pid, _| keep(*pid));
        self.stale.retain(|pid| keep(*pid));
    }

    /// Processes resolved from /proc since the last call, with their
    /// identities, for the recording.
    pub(crate) fn take_learnt(&mut self) -> impl Iterator<Item = (u32, &Identity)> {
        let learnt = std::mem::take(&mut self.learnt);
        let by_pid = &self.by_pid;
        learnt.into_iter().filter_map(move |pid| Some((pid, &**by_pid.get(&pid)?)))
    }

    /// Whether a resolution is waiting for `take_learnt`.
    pub(crate) fn has_learnt(&self) -> bool {
        !self.learnt.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory removed when the test ends.
    struct Dir(PathBuf);

    impl Dir {
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A /proc of one process in `cgroup`, of real uid 1000.
    fn fake_proc(name: &str, pid: u32, cgroup: &str) -> (Dir, Resolver) {
        let dir = Dir(std::env::temp_dir().join(format!("unixtrace-identity-{}-{name}", std::process::id())));
        let p = dir.path().join(pid.to_string());
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::write(p.join("status"), "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n").expect("status");
        std::fs::write(p.join("cgroup"), cgroup).expect("cgroup");
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "alice:x:1000:1000::/:/bin/sh\n").expect("passwd");
        let r = Resolver::new(dir.path(), &passwd);
        (dir, r)
    }

    #[test]
    fn a_process_is_resolved_from_its_status_and_cgroup() {
        let (_dir, r) = fake_proc("status", 42, "1:name=systemd:/\n0::/system.slice/web.service\n");
        let id = r.resolve(42).expect("resolved");
        assert_eq!(id.uid, Some(1000));
        assert_eq!(id.user.as_deref(), Some("alice"));
        assert_eq!(id.unit.as_deref(), Some("web.service"));
        assert_eq!(id.container, None);
        assert_eq!(r.resolve(43), None);
    }

    #[test]
    fn resolved_once_again_after_exec_inherited_at_fork_kept_a_while_after_exit() {
        let (dir, r) = fake_proc("cache", 42, "0::/system.slice/a.service\n");
        let mut p = Processes::with(r);
        p.observe(42);
        assert_eq!(p.take_learnt().count(), 1);
        std::fs::write(dir.path().join("42/cgroup"), "0::/system.slice/b.service\n").expect("cgroup");
        p.observe(42);
        assert_eq!(p.get(42).and_then(|i| i.unit.as_deref()), Some("a.service"), "read once");
        assert!(!p.has_learnt());
        p.exec(42);
        p.observe(42);
        assert_eq!(p.get(42).and_then(|i| i.unit.as_deref()), Some("b.service"), "read again after exec");
        assert_eq!(p.take_learnt().map(|(pid, _)| pid).collect::<Vec<_>>(), vec![42]);
        p.fork(42, 43);
        assert_eq!(p.get(43).and_then(|i| i.unit.as_deref()), Some("b.service"));
        p.observe(43);
        assert!(!p.has_learnt(), "an inherited identity is not read");
        p.exit(42);
        assert_eq!(p.get(42).and_then(|i| i.unit.as_deref()), Some("b.service"), "still named after exit");
        std::fs::remove_dir_all(dir.path().join("42")).expect("the process is gone");
        p.observe(42);
        assert_eq!(
            p.get(42).and_then(|i| i.unit.as_deref()),
            Some("b.service"),
            "an event after the exit (its fds' closes) still names it"
        );
        p.observe(44);
        assert_eq!(p.get(44), Some(&Identity::default()), "unreadable: unknown");
        assert!(!p.has_learnt(), "nothing to record for it");
    }

    #[test]
    fn exited_processes_are_bounded() {
        let mut p = Processes::default();
        for pid in 0..(EXITED as u32 * 3) {
            p.learn(pid, Identity::default());
            p.exit(pid);
        }
        assert!(p.len() <= EXITED);
    }

    #[test]
    fn a_replay_reads_nothing_from_proc() {
        let mut p = Processes::default();
        p.observe(1);
        assert_eq!(p.get(1), None);
        p.learn(1, Identity { unit: Some("x.service".into()), ..Identity::default() });
        p.exec(1);
        p.observe(1);
        assert_eq!(p.get(1).and_then(|i| i.unit.as_deref()), Some("x.service"));
    }

    #[test]
    fn identities_serialize_with_optional_fields() {
        let id = Identity {
            uid: Some(0),
            user: Some("root".into()),
            unit: None,
            container: Some(Container {
                runtime: Runtime::Crio,
                id: "abc".into(),
                name: None,
                pod_uid: None,
                qos: Some(Qos::BestEffort),
            }),
        };
        let text = serde_json::to_string(&id).expect("json");
        assert_eq!(
            text,
            r#"{"uid":0,"user":"root","unit":null,"container":{"runtime":"cri-o","id":"abc","pod_uid":null,"qos":"BestEffort"}}"#
        );
        assert_eq!(serde_json::from_str::<Identity>(&text).expect("back"), id);
        assert_eq!(serde_json::from_str::<Identity>("{}").expect("empty"), Identity::default());
    }

    #[test]
    fn tags_escape_what_processes_chose() {
        let lxc = Identity {
            container: Some(Container {
                runtime: Runtime::Lxc,
                id: "a\u{1b}b".into(),
                name: None,
                pod_uid: None,
                qos: None,
            }),
            unit: Some("x.scope".into()),
            ..Identity::default()
        };
        assert_eq!(lxc.tag().as_deref(), Some("lxc:a\\x1bb"));
        let named = Container {
            runtime: Runtime::Docker,
            id: "ab".repeat(32).into(),
            name: Some("web\u{1b}[2J".into()),
            pod_uid: None,
            qos: None,
        };
        let named = Identity { container: Some(named), ..Identity::default() };
        assert_eq!(named.tag().as_deref(), Some("docker:web\\x1b[2J"), "by its name, escaped");
        let unit = Identity { unit: Some("e\u{7}.service".into()), ..Identity::default() };
        assert_eq!(unit.tag().as_deref(), Some("e\\x07.service"));
        assert_eq!(Identity::default().tag(), None);
    }
}
