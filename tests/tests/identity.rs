//! Who is who end to end: real processes moved into cgroups named as
//! systemd, docker, podman, containerd, CRI-O, LXC and the kubelet name
//! them, then named by their unit and container in the snapshot, in live
//! events and in a recording's replay. Run as root (`cargo xtask test`).
//!
//! The cgroups are made in the unified (v2) hierarchy, wherever it is
//! mounted; a guest that mounts none gets one mounted here. Each test makes
//! its own, with names no other run uses, and removes them.

use std::{
    ffi::CString,
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    thread,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;
use unixpeer_tests::{sys, tracer::*};

/// The cgroup2 hierarchy's mount point.
fn cgroup2() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
        let mounted = mounts.lines().find_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        });
        if let Some(dir) = mounted {
            return dir;
        }
        // The QEMU guests mount no cgroup filesystem; every kernel of the
        // matrix has cgroup2, so the test mounts it rather than skip.
        let dir = PathBuf::from("/tmp/unixpeer-cgroup2");
        fs::create_dir_all(&dir).expect("mount point for cgroup2");
        let (src, target, fstype) = (c"none", CString::new(dir.to_str().expect("utf-8")).expect("path"), c"cgroup2");
        // SAFETY: valid NUL-terminated strings, no data.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
        assert_eq!(rc, 0, "cannot mount cgroup2 at {}: {}", dir.display(), std::io::Error::last_os_error());
        dir
    })
}

/// A cgroup made for the test (and the parents it had to make), removed
/// when dropped, once the processes moved into it have exited.
struct Cgroup {
    path: PathBuf,
    made: Vec<PathBuf>,
}

impl Cgroup {
    fn new(relative: &str) -> Self {
        let mut path = cgroup2().to_owned();
        let mut made = Vec::new();
        for part in relative.split('/') {
            path.push(part);
            match fs::create_dir(&path) {
                Ok(()) => made.push(path.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("cannot make cgroup {}: {e}", path.display()),
            }
        }
        Self { path, made }
    }

    fn add(&self, pid: i32) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("cannot move {pid} into {}: {e}", self.path.display()));
        let shown = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/PID/cgroup");
        let relative = self.path.strip_prefix(cgroup2()).expect("below the root");
        assert!(shown.contains(&format!("0::/{}\n", relative.display())), "{pid} is not in {relative:?}: {shown}");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            // A parent another test still uses is left to that test.
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Err(e) = fs::remove_dir(dir) {
                if e.raw_os_error() != Some(libc::EBUSY) || Instant::now() > deadline {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// 64 hex digits no other run uses: a container id, whose first 12
/// differ from every other id of the run.
fn unique_id(salt: u16) -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_nanos();
    format!("{salt:04x}{:08x}{nanos:052x}", std::process::id())
}

/// A pod UID as the kubelet writes it.
fn pod_uid(id: &str) -> String {
    format!("{}-{}-{}-{}-{}", &id[0..8], &id[8..12], &id[12..16], &id[16..20], &id[20..32])
}

/// Forks `comm`, moves it into `cgroup` before it does anything else, then
/// lets it run `f`. The caller keeps it in a `Children`.
fn spawn_in(cgroup: &Cgroup, comm: &str, f: impl FnOnce() -> i32) -> i32 {
    let gate = Gate::new();
    let pid = fork_child(comm, || {
        gate.wait();
        f()
    });
    cgroup.add(pid);
    gate.open();
    pid
}

/// Children killed and reaped when dropped, so that a failed test leaves
/// neither them nor (they would keep it busy) their cgroup behind.
struct Children(Vec<i32>);

impl Drop for Children {
    fn drop(&mut self) {
        for &pid in &self.0 {
            sys::kill(pid, libc::SIGKILL);
            let _ = sys::wait_pid(pid);
        }
    }
}

/// A server on `name` that accepts `n` connections and keeps them.
fn server(cgroup: &Cgroup, comm: &str, name: &str, n: usize) -> i32 {
    let ready = pipe();
    let pid = spawn_in(cgroup, comm, || {
        let Ok(l) = sys::fresh_listener(libc::SOCK_STREAM, name, 16) else { return 4 };
        report(&ready.write, "ready");
        for _ in 0..n {
            if sys::accept(l).is_err() {
                return 1;
            }
        }
        // SAFETY: pause(2) blocks until the test kills the server.
        unsafe { libc::pause() };
        0
    });
    assert_eq!(read_lines(&ready, 1), ["ready"], "the server did not start");
    pid
}

/// A client that connects to `name` and keeps the connection.
fn client(cgroup: &Cgroup, comm: &str, name: &str) -> i32 {
    let ready = pipe();
    let pid = spawn_in(cgroup, comm, || {
        if connect_to(name, libc::SOCK_STREAM, false).is_err() {
            return 2;
        }
        report(&ready.write, "connected");
        // SAFETY: as in `server`.
        unsafe { libc::pause() };
        0
    });
    assert_eq!(read_lines(&ready, 1), ["connected"], "the client did not connect");
    pid
}

fn holder_of(list: &Value, pid: i32) -> Option<&Value> {
    list.as_array()?.iter().find(|h| h["pid"] == pid)
}

/// A client and what its cgroup path says it is.
struct Client {
    pid: i32,
    runtime: &'static str,
    id: String,
    pod: Option<String>,
    qos: Option<&'static str>,
    unit: Option<String>,
}

/// Every cgroup naming once: the server in a service, one client per runtime.
struct World {
    server: i32,
    service: String,
    clients: Vec<Client>,
    // Dropped in this order: the processes, then their cgroups.
    children: Children,
    _cgroups: Vec<Cgroup>,
}

impl World {
    fn build(tag: &str, name: &str) -> Self {
        let service = format!("ut-{tag}-{}.service", std::process::id());
        let server_cg = Cgroup::new(&format!("system.slice/{service}"));
        let (docker, podman, containerd, crio) = (unique_id(1), unique_id(2), unique_id(3), unique_id(4));
        let (pod_b, pod_g) = (pod_uid(&unique_id(5)), pod_uid(&unique_id(6)));
        let lxc = format!("ut-{tag}-{}", std::process::id());
        let kubepods = |qos: &str, pod: &str, leaf: &str| match qos {
            "" => format!("kubepods.slice/kubepods-pod{}.slice/{leaf}", pod.replace('-', "_")),
            q => format!("kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{}.slice/{leaf}", pod.replace('-', "_")),
        };
        #[rustfmt::skip]
        let layouts = [
            (format!("system.slice/docker-{docker}.scope"), "docker", docker.clone(), None, None, Some(format!("docker-{docker}.scope"))),
            (format!("machine.slice/libpod-{podman}.scope"), "podman", podman.clone(), None, None, Some(format!("libpod-{podman}.scope"))),
            (kubepods("burstable", &pod_b, &format!("cri-containerd-{containerd}.scope")), "containerd", containerd.clone(), Some(pod_b.clone()), Some("Burstable"), Some(format!("cri-containerd-{containerd}.scope"))),
            (kubepods("", &pod_g, &format!("crio-{crio}.scope")), "cri-o", crio.clone(), Some(pod_g.clone()), Some("Guaranteed"), Some(format!("crio-{crio}.scope"))),
            (format!("lxc.payload.{lxc}"), "lxc", lxc.clone(), None, None, None),
        ];
        let mut cgroups = vec![server_cg];
        let mut children = Children(Vec::new());
        let server = server(&cgroups[0], "id-server", name, layouts.len());
        children.0.push(server);
        let mut clients = Vec::new();
        for (path, runtime, id, pod, qos, unit) in layouts {
            cgroups.push(Cgroup::new(&path));
            let pid = client(&cgroups[cgroups.len() - 1], "id-client", name);
            children.0.push(pid);
            clients.push(Client { pid, runtime, id, pod, qos, unit });
        }
        // Dropped children first: a parent is removed by whoever made it.
        cgroups.reverse();
        Self { server, service, clients, children, _cgroups: cgroups }
    }

    /// The processes exit; what they were stays for the checks.
    fn end_processes(&mut self) {
        drop(Children(std::mem::take(&mut self.children.0)));
    }

    /// The snapshot's (or `--at`'s) JSON names every end as it was placed.
    fn check_sockets(&self, sockets: &[Value], what: &str) {
        for Client { pid, runtime, id, pod, qos, unit } in &self.clients {
            let row = sockets
                .iter()
                .find(|s| {
                    holder_of(&s["holders"], *pid).is_some() && holder_of(&s["peer_holders"], self.server).is_some()
                })
                .unwrap_or_else(|| panic!("{what}: no socket of client {pid} connected to the server: {sockets:#?}"));
            let me = holder_of(&row["holders"], *pid).expect("the client");
            let want = serde_json::json!({"runtime": runtime, "id": id, "pod_uid": pod, "qos": qos});
            assert_eq!(me["container"], want, "{what}: {row}");
            assert_eq!(me["unit"].as_str(), unit.as_deref(), "{what}: {row}");
            assert_eq!(me["user"], "root", "{what}: {row}");
            let peer = holder_of(&row["peer_holders"], self.server).expect("the server");
            assert_eq!(
                (&peer["unit"], &peer["container"]),
                (&Value::from(self.service.as_str()), &Value::Null),
                "{what}: {row}"
            );
        }
    }
}

fn snapshot_json(args: &[&str]) -> Vec<Value> {
    let o = unixtrace(&[&["--json"], args].concat());
    assert!(o.status.success(), "unixtrace failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(json_line).collect()
}

#[test]
fn the_snapshot_names_the_unit_and_container_of_each_end() {
    require_root();
    let name = format!("@unixpeer-id-snap-{}", std::process::id());
    let world = World::build("snap", &name);
    let sockets = snapshot_json(&["--path", &name]);
    world.check_sockets(&sockets, "snapshot");

    // The table: the unit or the container, short as `docker ps` shows it.
    let o = unixtrace(&["--path", &name, "--wide"]);
    let table = String::from_utf8_lossy(&o.stdout);
    for Client { pid, runtime, id, .. } in &world.clients {
        let row = table.lines().find(|l| l.contains(&format!("[{pid}]:"))).unwrap_or_else(|| panic!("{table}"));
        let short: String = id.chars().take(12).collect();
        assert!(row.contains(&format!("({runtime}:{short})")), "{row}");
        assert!(row.contains(&format!("({})", world.service)), "{row}");
    }

    // Filters: either end may match; a container by a 12-character prefix
    // of its id, or by its LXC name.
    let held_by = |sockets: &[Value], pid: i32| sockets.iter().any(|s| holder_of(&s["holders"], pid).is_some());
    let all = snapshot_json(&["--path", &name, "--unit", "ut-snap-*"]);
    assert!(world.clients.iter().all(|c| held_by(&all, c.pid)), "--unit by the server's unit: {all:#?}");
    for c in &world.clients {
        let prefix: String = c.id.chars().take(12).collect();
        let one = snapshot_json(&["--path", &name, "--container", &prefix]);
        let others = world.clients.iter().filter(|o| o.pid != c.pid && held_by(&one, o.pid)).count();
        assert!(held_by(&one, c.pid) && others == 0, "--container {prefix}: {one:#?}");
    }
    let rooted = snapshot_json(&["--path", &name, "--user", "root"]);
    assert!(world.clients.iter().all(|c| held_by(&rooted, c.pid)), "--user root: {rooted:#?}");
    assert!(snapshot_json(&["--path", &name, "--user", "4242424"]).is_empty(), "nobody runs as 4242424");
}

#[test]
fn live_events_name_the_unit_and_container_of_both_ends() {
    require_root();
    let name = format!("@unixpeer-id-live-{}", std::process::id());
    let comm = "id-live";
    let mut f = Follower::start(&["--comm", comm]);
    let service = format!("ut-live-{}.service", std::process::id());
    let server_cg = Cgroup::new(&format!("system.slice/{service}"));
    let id = unique_id(7);
    let pod = pod_uid(&unique_id(8));
    let client_cg = Cgroup::new(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
        pod.replace('-', "_")
    ));
    let mut children = Children(Vec::new());
    let server = server(&server_cg, comm, &name, 1);
    children.0.push(server);
    let client = client(&client_cg, comm, &name);
    children.0.push(client);
    let container = serde_json::json!({"runtime": "containerd", "id": id, "pod_uid": pod, "qos": "BestEffort"});
    let connect = f.wait_for("the client's connect", WAIT, |v| is_event(v, "connect", client));
    assert_eq!(connect["container"], container, "{connect}");
    assert_eq!(connect["unit"], format!("cri-containerd-{id}.scope"), "{connect}");
    assert_eq!((&connect["user"], &connect["peer_user"]), (&Value::from("root"), &Value::from("root")), "{connect}");
    assert_eq!((&connect["peer_unit"], &connect["peer_container"]), (&Value::from(service.as_str()), &Value::Null));
    let accept = f.wait_for("the server's accept", WAIT, |v| is_event(v, "accept", server));
    assert_eq!((&accept["unit"], &accept["container"]), (&Value::from(service.as_str()), &Value::Null), "{accept}");
    assert_eq!(accept["peer_container"], container, "{accept}");
    let holder = holder_of(&accept["peer_holders"], client).unwrap_or_else(|| panic!("{accept}"));
    assert_eq!(holder["container"], container, "{accept}");
    f.stop();
}

/// A service manager forks, moves the child into the unit's cgroup, then
/// execs: the process is read again after its exec.
#[test]
fn a_process_moved_then_execd_is_named_after_its_new_unit() {
    require_root();
    let name = format!("@unixpeer-id-exec-{}", std::process::id());
    let listener = listen_on(&name, libc::SOCK_STREAM, 16);
    let before = Cgroup::new(&format!("system.slice/ut-before-{}.service", std::process::id()));
    let after_unit = format!("ut-after-{}.service", std::process::id());
    let after = Cgroup::new(&format!("system.slice/{after_unit}"));
    let sockfarm = CString::new(env!("CARGO_BIN_EXE_sockfarm")).expect("path");
    let args = [c"sockfarm".to_owned(), c"--connect".to_owned(), CString::new(name.as_str()).expect("name")];
    let argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let null = fs::File::options().read(true).write(true).open("/dev/null").expect("/dev/null");
    let mut f = Follower::start(&[]);
    let made = pipe();
    let moved = Gate::new();
    // sockfarm holds its socket until its stdin ends: until the test is done
    // looking, so that it is still there to be read.
    let hold = pipe();
    let mut child = Children(Vec::new());
    let pid = spawn_in(&before, "id-exec", || {
        let Ok((a, _)) = sys::socketpair(libc::SOCK_STREAM) else { return 2 };
        report(&made.write, &inode_of(a).to_string());
        moved.wait();
        sys::close(hold.write.as_raw_fd());
        // SAFETY: dup2 and execv with valid fds and NUL-terminated strings.
        unsafe {
            libc::dup2(hold.read.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::execv(sockfarm.as_ptr(), argv.as_ptr());
        }
        3
    });
    child.0.push(pid);
    read_lines(&made, 1);
    let pair = f.wait_for("the socketpair before the move", WAIT, |v| is_event(v, "socketpair", pid));
    assert_eq!(pair["unit"], format!("ut-before-{}.service", std::process::id()), "{pair}");
    after.add(pid);
    moved.open();
    let connect = f.wait_for("sockfarm's connect after the exec", WAIT, |v| is_event(v, "connect", pid));
    assert_eq!(connect["comm"], "sockfarm", "{connect}");
    assert_eq!(connect["unit"], after_unit.as_str(), "{connect}");
    drop(hold);
    child.0.clear();
    assert_eq!(wait_child(pid), 0, "sockfarm failed");
    sys::close(listener);
    f.stop();
}

#[test]
fn a_recording_keeps_who_was_who_for_its_replay() {
    require_root();
    let name = format!("@unixpeer-id-rec-{}", std::process::id());
    let file = std::env::temp_dir().join(format!("unixpeer-id-{}.jsonl", std::process::id()));
    let _ = fs::remove_file(&file);
    let f = file.to_str().expect("utf-8");
    // Connected before the recording starts: known from its seeds.
    let mut world = World::build("rec", &name);
    let recorder = follow_command()
        .args(["-w", f, "--comm", "id-late"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start unixtrace -w");
    let deadline = Instant::now() + WAIT;
    while !fs::read_to_string(&file).is_ok_and(|t| t.contains("seeds_done")) {
        assert!(Instant::now() < deadline, "no seeds in {f}");
        thread::sleep(Duration::from_millis(50));
    }
    // Met in events while recording: known from proc records.
    let late_name = format!("{name}-late");
    let late_unit = format!("ut-late-{}.service", std::process::id());
    let late_cg = Cgroup::new(&format!("system.slice/{late_unit}"));
    let docker = unique_id(9);
    let late_client_cg = Cgroup::new(&format!("system.slice/docker-{docker}.scope"));
    let mut late = Children(Vec::new());
    let late_server = server(&late_cg, "id-late", &late_name, 1);
    late.0.push(late_server);
    let late_client = client(&late_client_cg, "id-late", &late_name);
    late.0.push(late_client);
    let deadline = Instant::now() + WAIT;
    loop {
        let o = unixtrace(&["-r", f, "--json"]);
        if String::from_utf8_lossy(&o.stdout).contains("\"event\":\"accept\"") {
            break;
        }
        assert!(Instant::now() < deadline, "the accept never reached {f}");
        thread::sleep(Duration::from_millis(100));
    }
    interrupt(&recorder);
    let _ = recorder.wait_with_output();
    world.end_processes();
    drop(late);
    drop((late_client_cg, late_cg));
    // The processes are gone; their pids may be anyone's by now.
    let text = fs::read_to_string(&file).expect("the recording");
    assert!(text.contains("\"k\":\"proc\""), "no proc record:\n{text}");

    let seeds = snapshot_json(&["-r", f, "--at", "+0s", "--path", &name]);
    world.check_sockets(&seeds, "replay --at the start");
    let events = snapshot_json(&["-r", f]);
    let connect = events
        .iter()
        .find(|v| is_event(v, "connect", late_client))
        .unwrap_or_else(|| panic!("no connect replayed: {events:#?}"));
    assert_eq!(connect["container"]["id"], docker.as_str(), "{connect}");
    assert_eq!(connect["peer_unit"], late_unit.as_str(), "{connect}");
    let o = unixtrace(&["-r", f]);
    let lines = String::from_utf8_lossy(&o.stdout);
    let line = lines
        .lines()
        .find(|l| l.contains("connect") && l.contains(&format!("{late_client}/")))
        .unwrap_or_else(|| panic!("{lines}"));
    assert!(line.ends_with(&format!("[docker:{} \u{2192} {late_unit}]", &docker[..12])), "{line}");
    let only = snapshot_json(&["-r", f, "--container", &docker[..12]]);
    assert!(only.iter().any(|v| is_event(v, "connect", late_client)), "{only:#?}");
    assert!(
        only.iter().filter(|v| v["kind"] == "event").all(|v| v["pid"] == late_client || v["peer_pid"] == late_client),
        "{only:#?}"
    );
    // The summary groups either end by unit or by container.
    let pair = |by: &str| {
        let records = snapshot_json(&["-r", f, "--summary", "--by", by]);
        records
            .into_iter()
            .find(|v| v["kind"] == "pair" && v["path"] == late_name)
            .unwrap_or_else(|| panic!("--by {by}"))
    };
    let by_unit = pair("unit");
    assert_eq!(
        (&by_unit["client"], &by_unit["server"]),
        (&Value::from(format!("docker-{docker}.scope")), &Value::from(late_unit.as_str())),
        "{by_unit}"
    );
    let by_container = pair("container");
    assert_eq!(
        (&by_container["client"], &by_container["server"]),
        (&Value::from(format!("docker:{docker}")), &Value::from("-")),
        "{by_container}"
    );
    assert_eq!(by_container["connections"], 1, "{by_container}");
    // The graph draws each container as a cluster around its processes.
    let dot = std::env::temp_dir().join(format!("unixpeer-id-{}.dot", std::process::id()));
    let d = dot.to_str().expect("utf-8");
    let o = unixtrace(&["export", "-r", f, "--format", "dot", "--by", "container", "-o", d, "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let graph = fs::read_to_string(&dot).expect("the graph");
    let _ = fs::remove_file(&dot);
    let short = &docker[..12];
    assert!(graph.contains(&format!("    label=\"docker:{short}\";")), "{graph}");
    assert!(
        graph.contains(&format!("    \"docker:{short}/id-late\" [label=\"id-late\\npid {late_client}\"];")),
        "{graph}"
    );
    // The HTML timeline gives each unit one lane.
    let o = unixtrace(&["export", "-r", f, "--format", "html", "--by", "unit", "-o", d, "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = fs::read_to_string(&dot).expect("the page");
    let _ = fs::remove_file(&dot);
    let data = page.split("id=\"data\">").nth(1).and_then(|d| d.split("</script>").next()).expect("the page's data");
    let lanes: Value = serde_json::from_str::<Value>(data).expect("JSON data")["lanes"].clone();
    let want = Value::from(vec![format!("docker-{docker}.scope"), late_unit.clone()]);
    assert_eq!(lanes, want, "one lane per unit");
    let o = unixtrace(&["export", "-r", f, "--format", "perfetto", "--by", "unit", "-o", d]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("dot and html only"), "{o:?}");
    let none = snapshot_json(&["-r", f, "--unit", "no-such.service"]);
    assert!(none.iter().all(|v| v["kind"] != "event"), "{none:#?}");
    let _ = fs::remove_file(&file);
}
