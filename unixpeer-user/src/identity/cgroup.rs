//! A process's systemd unit and container, read from the cgroup path the
//! kernel shows in `/proc/PID/cgroup`: systemd, the container runtimes and
//! the kubelet each name their cgroups in a fixed way, so the path alone
//! says who started the process, with no runtime to ask.

use super::{Container, Qos, Runtime};

/// What the cgroup path tells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) unit: Option<Box<str>>,
    pub(crate) container: Option<Container>,
}

/// The path to read from `/proc/PID/cgroup`: the unified (v2) hierarchy's
/// when the process is placed below its root, else systemd's named v1
/// hierarchy (hybrid layouts keep the unified one empty), else the first
/// other v1 hierarchy that places it anywhere (docker's cgroupfs driver on
/// a v1-only host).
pub(crate) fn path_of(file: &[u8]) -> Option<&str> {
    let mut v2 = None;
    let mut systemd = None;
    let mut other = None;
    for line in file.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else { continue };
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        // A cgroup removed while the process is still in it (v2 only).
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        if path.is_empty() || path == "/" {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers == "name=systemd" {
            systemd = Some(path);
        } else if other.is_none() && !controllers.is_empty() {
            other = Some(path);
        }
    }
    v2.or(systemd).or(other)
}

/// The unit and container a cgroup path names.
pub(crate) fn placement(path: &str) -> Placement {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    Placement { unit: unit(&segments), container: container(&segments) }
}

/// The system unit, as `systemctl status PID` and `ps -o unit` name it:
/// the first `.service` or `.scope` below the slices. Deeper cgroups (a
/// service's own, a user manager's units) belong to that unit.
fn unit(segments: &[&str]) -> Option<Box<str>> {
    for s in segments {
        // systemd prefixes `_` to names that would clash with the kernel's
        // own files (cg_escape).
        let s = s.strip_prefix('_').unwrap_or(s);
        if s.ends_with(".slice") {
            continue;
        }
        return (s.ends_with(".service") || s.ends_with(".scope")).then(|| s.into());
    }
    None
}

fn container(segments: &[&str]) -> Option<Container> {
    let (pod_uid, qos) = kubernetes(segments);
    let (runtime, id) = segments.iter().enumerate().find_map(|(i, s)| {
        let parent = i.checked_sub(1).and_then(|p| segments.get(p)).copied();
        runtime_of(s, parent, qos.is_some())
    })?;
    Some(Container { runtime, id: id.into(), name: None, pod_uid, qos })
}

/// A container cgroup as one runtime names it, with `parent` the segment
/// above it; `kubepods` when the kubelet made the path.
fn runtime_of<'a>(segment: &'a str, parent: Option<&str>, kubepods: bool) -> Option<(Runtime, &'a str)> {
    let scope = segment.strip_suffix(".scope");
    let prefixed = |prefix: &str| scope.and_then(|s| s.strip_prefix(prefix)).filter(|id| is_id(id));
    if let Some(id) = prefixed("docker-") {
        return Some((Runtime::Docker, id));
    }
    // `libpod-conmon-ID.scope` and `crio-conmon-ID.scope` hold the runtime's
    // monitor, which is not in the container: is_id refuses `conmon-ID`.
    if let Some(id) = prefixed("libpod-") {
        return Some((Runtime::Podman, id));
    }
    if let Some(id) = prefixed("cri-containerd-") {
        return Some((Runtime::Containerd, id));
    }
    if let Some(id) = prefixed("crio-") {
        return Some((Runtime::Crio, id));
    }
    if let Some(name) = segment.strip_prefix("lxc.payload.").filter(|n| !n.is_empty()) {
        return Some((Runtime::Lxc, name));
    }
    // cgroupfs drivers: `/docker/ID`, `/libpod_parent/libpod-ID`,
    // `/kubepods/.../podUID/crio-ID` or `/kubepods/.../podUID/ID`, and LXC
    // before 4.0: `/lxc/NAME`.
    match parent {
        Some("docker") if is_id(segment) => Some((Runtime::Docker, segment)),
        Some("libpod_parent") => segment.strip_prefix("libpod-").filter(|id| is_id(id)).map(|id| (Runtime::Podman, id)),
        Some("lxc") if !segment.is_empty() => Some((Runtime::Lxc, segment)),
        // The kubelet's cgroupfs driver: under the pod, and with docker
        // or containerd the bare id, which does not name the runtime.
        Some(p) if kubepods && p.starts_with("pod") => {
            if let Some(id) = segment.strip_prefix("crio-").filter(|id| is_id(id)) {
                Some((Runtime::Crio, id))
            } else if let Some(id) = segment.strip_prefix("cri-containerd-").filter(|id| is_id(id)) {
                Some((Runtime::Containerd, id))
            } else if let Some(id) = segment.strip_prefix("docker-").filter(|id| is_id(id)) {
                Some((Runtime::Docker, id))
            } else {
                is_id(segment).then_some((Runtime::Cri, segment))
            }
        }
        _ => None,
    }
}

/// Runtimes name containers by 64 lowercase hex digits.
fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The pod's UID and QoS class, from the kubelet's cgroups: with the
/// systemd driver `kubepods.slice/kubepods-burstable.slice/
/// kubepods-burstable-pod<UID with _ for ->.slice`, with cgroupfs
/// `kubepods/burstable/pod<UID>`; guaranteed pods sit right under kubepods.
fn kubernetes(segments: &[&str]) -> (Option<Box<str>>, Option<Qos>) {
    let Some(root) = segments.iter().position(|s| *s == "kubepods.slice" || *s == "kubepods") else {
        return (None, None);
    };
    let mut qos = Qos::Guaranteed;
    let mut pod = None;
    for s in &segments[root + 1..] {
        if let Some(uid) = s.strip_suffix(".slice").and_then(|s| s.rsplit_once("-pod")).map(|(_, uid)| uid) {
            pod = Some(uid.replace('_', "-").into_boxed_str());
        } else if let Some(uid) = s.strip_prefix("pod").filter(|_| !s.ends_with(".slice")) {
            pod = Some(uid.into());
        }
        let class = s.strip_suffix(".slice").map_or(*s, |s| s.strip_prefix("kubepods-").unwrap_or(s));
        if class == "burstable" || class.starts_with("burstable-") {
            qos = Qos::Burstable;
        } else if class == "besteffort" || class.starts_with("besteffort-") {
            qos = Qos::BestEffort;
        }
        if pod.is_some() {
            break;
        }
    }
    (pod.filter(|p| !p.is_empty()), Some(qos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A container as (runtime, id, pod UID, QoS class).
    type Found = (Runtime, String, Option<String>, Option<Qos>);

    fn of(path: &str) -> (Option<String>, Option<Found>) {
        let p = placement(path);
        (p.unit.map(String::from), p.container.map(|c| (c.runtime, c.id.into(), c.pod_uid.map(String::from), c.qos)))
    }

    fn unit_only(path: &str) -> Option<String> {
        let (unit, container) = of(path);
        assert_eq!(container, None, "{path} named a container");
        unit
    }

    #[test]
    fn the_v2_path_is_preferred_when_below_the_root() {
        let hybrid =
            b"12:memory:/system.slice/a.service\n1:name=systemd:/system.slice/b.service\n0::/system.slice/c.service\n";
        assert_eq!(path_of(hybrid), Some("/system.slice/c.service"));
        let empty_v2 = b"12:memory:/\n1:name=systemd:/system.slice/b.service\n0::/\n";
        assert_eq!(path_of(empty_v2), Some("/system.slice/b.service"));
        assert_eq!(path_of(b"4:cpu,cpuacct:/docker/x\n0::/\n"), Some("/docker/x"));
        assert_eq!(path_of(b"0::/system.slice/gone.service (deleted)\n"), Some("/system.slice/gone.service"));
        assert_eq!(path_of(b"0::/\n"), None);
        assert_eq!(path_of(b""), None);
        assert_eq!(path_of(b"garbage\n\xff\xfe:\n::\n"), None);
    }

    #[test]
    fn systemd_services_scopes_and_sessions() {
        assert_eq!(unit_only("/system.slice/nginx.service").as_deref(), Some("nginx.service"));
        assert_eq!(unit_only("/system.slice/nginx.service/worker").as_deref(), Some("nginx.service"));
        assert_eq!(
            unit_only("/system.slice/system-getty.slice/getty@tty1.service").as_deref(),
            Some("getty@tty1.service")
        );
        assert_eq!(unit_only("/user.slice/user-1000.slice/session-3.scope").as_deref(), Some("session-3.scope"));
        assert_eq!(unit_only("/init.scope").as_deref(), Some("init.scope"));
        assert_eq!(unit_only("/system.slice/_init.scope").as_deref(), Some("init.scope"));
    }

    #[test]
    fn a_user_managers_units_belong_to_user_at_service() {
        let p = "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service";
        assert_eq!(unit_only(p).as_deref(), Some("user@1000.service"));
        let p = "/user.slice/user-1000.slice/user@1000.service/init.scope";
        assert_eq!(unit_only(p).as_deref(), Some("user@1000.service"));
    }

    #[test]
    fn no_unit_in_slices_or_plain_cgroups() {
        assert_eq!(unit_only("/system.slice"), None);
        assert_eq!(unit_only("/user.slice/user-1000.slice"), None);
        assert_eq!(unit_only("/mygroup/sub"), None);
        assert_eq!(unit_only("/system.slice/a.mount"), None);
    }

    #[test]
    fn docker_with_either_driver() {
        let (unit, c) = of(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(unit, Some(format!("docker-{ID}.scope")));
        assert_eq!(c, Some((Runtime::Docker, ID.into(), None, None)));
        assert_eq!(of(&format!("/docker/{ID}")).1, Some((Runtime::Docker, ID.into(), None, None)));
        assert_eq!(of(&format!("/system.slice/docker-{ID}.scope/init.scope")).1.map(|c| c.0), Some(Runtime::Docker));
        // Not an id: a unit that happens to start like one.
        assert_eq!(of("/system.slice/docker-compose.scope").1, None);
        assert_eq!(of("/system.slice/docker.service").1, None);
    }

    #[test]
    fn podman_root_rootless_and_cgroupfs() {
        assert_eq!(of(&format!("/machine.slice/libpod-{ID}.scope")).1, Some((Runtime::Podman, ID.into(), None, None)));
        let rootless = format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container");
        let (unit, c) = of(&rootless);
        assert_eq!(unit.as_deref(), Some("user@1000.service"));
        assert_eq!(c, Some((Runtime::Podman, ID.into(), None, None)));
        assert_eq!(of(&format!("/libpod_parent/libpod-{ID}")).1, Some((Runtime::Podman, ID.into(), None, None)));
        // The monitor is not in the container.
        assert_eq!(of(&format!("/machine.slice/libpod-conmon-{ID}.scope")).1, None);
    }

    #[test]
    fn lxc_payloads() {
        assert_eq!(of("/lxc.payload.web1").1, Some((Runtime::Lxc, "web1".into(), None, None)));
        assert_eq!(of("/lxc.payload.web1/system.slice/nginx.service").1.map(|c| c.1), Some("web1".into()));
        assert_eq!(of("/lxc/old1").1, Some((Runtime::Lxc, "old1".into(), None, None)));
        assert_eq!(of("/lxc.monitor.web1").1, None);
        assert_eq!(of("/lxc.payload.").1, None);
    }

    #[test]
    fn kubernetes_with_the_systemd_driver() {
        let pod = "1b2c3d4e-0000-4111-8222-333344445555";
        let underscored = pod.replace('-', "_");
        let burstable = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(of(&burstable).1, Some((Runtime::Containerd, ID.into(), Some(pod.into()), Some(Qos::Burstable))));
        let besteffort = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{underscored}.slice/crio-{ID}.scope"
        );
        assert_eq!(of(&besteffort).1, Some((Runtime::Crio, ID.into(), Some(pod.into()), Some(Qos::BestEffort))));
        let guaranteed = format!("/kubepods.slice/kubepods-pod{underscored}.slice/docker-{ID}.scope");
        assert_eq!(of(&guaranteed).1, Some((Runtime::Docker, ID.into(), Some(pod.into()), Some(Qos::Guaranteed))));
        assert_eq!(of(&format!("/kubepods.slice/kubepods-pod{underscored}.slice/crio-conmon-{ID}.scope")).1, None);
    }

    #[test]
    fn kubernetes_with_the_cgroupfs_driver() {
        let pod = "1b2c3d4e-0000-4111-8222-333344445555";
        let bare = format!("/kubepods/burstable/pod{pod}/{ID}");
        assert_eq!(of(&bare).1, Some((Runtime::Cri, ID.into(), Some(pod.into()), Some(Qos::Burstable))));
        let crio = format!("/kubepods/besteffort/pod{pod}/crio-{ID}");
        assert_eq!(of(&crio).1, Some((Runtime::Crio, ID.into(), Some(pod.into()), Some(Qos::BestEffort))));
        let guaranteed = format!("/kubepods/pod{pod}/cri-containerd-{ID}");
        assert_eq!(of(&guaranteed).1, Some((Runtime::Containerd, ID.into(), Some(pod.into()), Some(Qos::Guaranteed))));
        // The pod's own cgroup, no container below it.
        assert_eq!(of(&format!("/kubepods/pod{pod}")).1, None);
    }

    #[test]
    fn hostile_paths_do_not_panic() {
        for p in ["", "/", "//", "/kubepods.slice/-pod.slice", "/kubepods/pod", "/\u{1b}[31m.service", "/a/../b"] {
            let _ = placement(p);
        }
        assert_eq!(unit_only("/system.slice/\u{1b}[31m.service").as_deref(), Some("\u{1b}[31m.service"));
    }
}
