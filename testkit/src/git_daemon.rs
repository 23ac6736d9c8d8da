//! Real Git servers for tests: `git daemon` on free loopback ports, silent listeners, and
//! repositories built with the `git` command.
//!
//! Everything listens on 127.0.0.1 only, on ports the kernel hands out; every process started
//! here is killed by a drop guard.

use std::fs;
use std::io::{ErrorKind, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Set to `1` (CI does) to make a missing `git` or `git daemon` a failure instead of a skip.
pub const REQUIRE_GIT_VAR: &str = "FLEET_REQUIRE_GIT";

/// How long a started daemon may take to accept connections.
const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How many free ports to try if another process takes ours between probe and bind.
const DAEMON_START_ATTEMPTS: usize = 5;

/// True when `git` and `git daemon` are installed. Otherwise prints a loud SKIP line naming
/// `test` and returns false, or panics when [`REQUIRE_GIT_VAR`] is `1`.
pub fn git_available(test: &str) -> bool {
    let missing = match git_daemon_missing() {
        None => return true,
        Some(why) => why,
    };
    if std::env::var(REQUIRE_GIT_VAR).as_deref() == Ok("1") {
        panic!("{test}: {missing}, and {REQUIRE_GIT_VAR}=1 requires it");
    }
    // Straight to the stderr handle: libtest captures `eprintln!` of passing tests, and a skip
    // must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIP {test}: {missing}. Install Debian's `git` package, \
         or set {REQUIRE_GIT_VAR}=1 to fail instead. ***\n"
    );
    false
}

fn git_daemon_missing() -> Option<String> {
    git_daemon_path().err()
}

/// The `git-daemon` program itself. Tests run it directly rather than as `git daemon`: the `git`
/// wrapper runs it as a child process, so killing the wrapper would leave the daemon serving.
fn git_daemon_path() -> Result<PathBuf, String> {
    let output = match Command::new("git").arg("--exec-path").output() {
        Ok(output) if output.status.success() => output,
        Ok(output) => return Err(format!("`git --exec-path` failed: {output:?}")),
        Err(e) => return Err(format!("the `git` command is missing ({e})")),
    };
    let exec_path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let daemon = Path::new(&exec_path).join("git-daemon");
    match fs::metadata(&daemon) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(daemon),
        _ => Err(format!(
            "`git daemon` is missing ({} not found)",
            daemon.display()
        )),
    }
}

/// Runs `git` with a configuration that ignores the user's and the system's, and returns its
/// trimmed standard output. Panics with the command's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    git_with_input(dir, args, None)
}

/// [`git`] with bytes on standard input.
pub fn git_with_input(dir: &Path, args: &[&str], input: Option<&[u8]>) -> String {
    let mut child = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Fleet Test")
        .env("GIT_AUTHOR_EMAIL", "test@fleet.invalid")
        .env("GIT_COMMITTER_NAME", "Fleet Test")
        .env("GIT_COMMITTER_EMAIL", "test@fleet.invalid")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run git {args:?}: {e}"));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input).expect("write git stdin");
    }
    let output = child.wait_with_output().expect("wait for git");
    assert!(
        output.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A `git daemon --reuseaddr --base-path=<base> --export-all --listen=127.0.0.1 --port=<port>
/// <base>` process serving every repository under `base` on `git://127.0.0.1:<port>/`.
/// Killed on drop.
pub struct GitDaemon {
    child: Option<Child>,
    port: u16,
    base: PathBuf,
}

impl GitDaemon {
    /// Starts a daemon on a free port and waits until it accepts connections.
    pub fn start(base: &Path) -> GitDaemon {
        let mut last_error = String::new();
        for _ in 0..DAEMON_START_ATTEMPTS {
            let port = free_port();
            match spawn_daemon(base, port) {
                Ok(child) => {
                    return GitDaemon {
                        child: Some(child),
                        port,
                        base: base.to_path_buf(),
                    }
                }
                Err(e) => last_error = e,
            }
        }
        panic!("git daemon did not start: {last_error}");
    }

    /// The URL of repository `name` (a directory under `base`, e.g. `fleet.git`).
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// The port the daemon listens (or listened) on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// True while the daemon process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the daemon ("Git unavailable"); later connections are refused. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same port (after [`GitDaemon::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + DAEMON_READY_TIMEOUT;
        loop {
            match spawn_daemon(&self.base, self.port) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() > deadline => panic!("git daemon did not restart: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on right now (the kernel's choice for an ephemeral bind).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn spawn_daemon(base: &Path, port: u16) -> Result<Child, String> {
    let log_path = base.join(format!(".git-daemon-{port}.log"));
    let log = fs::File::create(&log_path).map_err(|e| format!("create daemon log: {e}"))?;
    let mut child = Command::new(git_daemon_path()?)
        // For "Ready to rumble" once it listens, and connection logs for failed tests.
        .arg("--verbose")
        .arg("--reuseaddr")
        .arg(format!("--base-path={}", base.display()))
        .arg("--export-all")
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(base)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn git daemon: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + DAEMON_READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "git daemon on port {port} exited with {status}: {log}"
            ));
        }
        // The log line proves that *this* daemon listens: a connection alone could reach another
        // process that took the port first (ours would then exit with "address in use").
        let listening = fs::read_to_string(&log_path)
            .map(|log| log.contains("Ready to rumble"))
            .unwrap_or(false);
        if listening && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "git daemon on port {port} never accepted a connection"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP server on loopback that accepts connections and never answers: a Git server that
/// hangs. Stops on drop.
pub struct HangingServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HangingServer {
    /// Starts listening on a free port.
    pub fn start() -> HangingServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HangingServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// A `git://` URL that points at this server.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for HangingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One file of a commit built by [`WorkRepo::commit`].
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// A regular file (mode 0644 in Git).
    File(&'a [u8]),
    /// An executable file (mode 0755 in Git).
    Executable(&'a [u8]),
    /// A symbolic link with this target.
    Symlink(&'a str),
}

/// A bare repository served by a daemon: `<base>/<name>`.
pub fn init_bare(base: &Path, name: &str) -> PathBuf {
    let path = base.join(name);
    git(
        base,
        &["init", "-q", "--bare", "--initial-branch=main", name],
    );
    path
}

/// A working repository in which tests build commits and push them to bare repositories.
pub struct WorkRepo {
    dir: PathBuf,
}

impl WorkRepo {
    /// Creates an empty repository in `dir` (which must not be under a daemon's base).
    pub fn init(dir: &Path) -> WorkRepo {
        fs::create_dir_all(dir).expect("create work dir");
        git(dir, &["init", "-q", "--initial-branch=main"]);
        git(dir, &["config", "core.fileMode", "true"]);
        git(dir, &["config", "core.symlinks", "true"]);
        WorkRepo {
            dir: dir.to_path_buf(),
        }
    }

    /// The working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `entries` (paths relative to the repository, parents created), commits every
    /// change in the working tree and returns the new commit's sha.
    pub fn commit(&self, message: &str, entries: &[(&str, Entry<'_>)]) -> String {
        for (path, entry) in entries {
            let target = self.dir.join(path);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).expect("create parent");
            }
            if fs::symlink_metadata(&target).is_ok() {
                fs::remove_file(&target).expect("replace entry");
            }
            match entry {
                Entry::File(content) | Entry::Executable(content) => {
                    fs::write(&target, content).expect("write file");
                    let mode = if matches!(entry, Entry::Executable(_)) {
                        0o755
                    } else {
                        0o644
                    };
                    fs::set_permissions(&target, fs::Permissions::from_mode(mode)).expect("chmod");
                }
                Entry::Symlink(to) => std::os::unix::fs::symlink(to, &target).expect("symlink"),
            }
        }
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    /// The sha of `HEAD`.
    pub fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"])
    }

    /// Force-pushes `HEAD` to `branch` of the bare repository at `bare`.
    pub fn push(&self, bare: &Path, branch: &str) {
        let bare = bare.to_str().expect("utf-8 path");
        let refspec = format!("+HEAD:refs/heads/{branch}");
        git(&self.dir, &["push", "-q", bare, &refspec]);
    }
}
