//! `fleet-demo run`: builds the images, makes the fleet repository and serves it (primary and
//! mirror), starts the controller, three real agents and the simulator, waits for the first
//! release everywhere, commits a second one and shows its waves until Ctrl-C; then stops
//! everything and removes every container the agents made.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util_free::Shutdown;

use crate::gitd::{GitDaemon, GitdError};
use crate::images::{self, ImageError};
use crate::prereq::{self, PrereqError};
use crate::progress::Watcher;
use crate::repo::{DemoRepo, Inventory, ReleaseKind, RepoError};
use crate::stack::{self, Bins, Controller, Proc, StackError};

/// Marks a directory as the demo's own (so a rerun may wipe it).
const MARKER: &str = ".fleet-demo";

/// What the demo does.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where everything lives (wiped at start if a previous demo left it).
    pub dir: PathBuf,
    /// The controller's address.
    pub listen: SocketAddr,
    /// How many real agents (the canaries).
    pub agents: usize,
    /// How many simulated devices.
    pub simulated: usize,
    /// Bake between waves.
    pub bake: String,
    /// No terminal drawing; machine-readable `FLEET_DEMO key=value` lines.
    pub headless: bool,
    /// Tells concurrent demos' containers apart.
    pub instance: String,
    /// `examples/fleet-repo`.
    pub examples: PathBuf,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Something to install.
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    /// Images.
    #[error(transparent)]
    Images(#[from] ImageError),
    /// The repository.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The git servers.
    #[error(transparent)]
    Gitd(#[from] GitdError),
    /// The processes.
    #[error(transparent)]
    Stack(#[from] StackError),
    /// The demo directory.
    #[error("{0}")]
    Dir(String),
    /// The controller's address is taken.
    #[error("{0} is in use; pass --listen 127.0.0.1:PORT")]
    AddressInUse(SocketAddr),
    /// The fleet did not converge.
    #[error("{0}")]
    Stuck(String),
}

/// Everything running, stopped in order on [`Running::shutdown`].
#[derive(Default)]
struct Running {
    gitd: Vec<GitDaemon>,
    controller: Option<Controller>,
    agents: Vec<Proc>,
    sim: Option<Proc>,
    namespaces: Vec<String>,
}

impl Running {
    fn shutdown(&mut self, say: &dyn Fn(&str)) {
        say("stopping the simulator, the agents, the controller and the git servers …");
        if let Some(mut s) = self.sim.take() {
            s.stop(Duration::from_secs(5));
        }
        for a in &mut self.agents {
            a.stop(Duration::from_secs(20));
        }
        self.agents.clear();
        if let Some(mut c) = self.controller.take() {
            c.proc.stop(Duration::from_secs(10));
        }
        self.gitd.clear();
        let n = stack::remove_namespaces(&self.namespaces);
        say(&format!(
            "removed {n} container(s) the demo's agents created; nothing of the demo is running"
        ));
    }
}

/// A tiny stand-in for a cancellation token: Ctrl-C or SIGTERM.
mod tokio_util_free {
    /// Resolves when the process is asked to stop.
    pub struct Shutdown;

    impl Shutdown {
        /// Waits for Ctrl-C or SIGTERM.
        pub async fn wait() {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut t) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = t.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
}

fn prepare_dir(dir: &Path) -> Result<(), DemoError> {
    if dir.exists() {
        let ours = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !ours && !empty {
            return Err(DemoError::Dir(format!(
                "{} exists and is not a demo directory; pass --dir to an empty or new one",
                dir.display()
            )));
        }
        std::fs::remove_dir_all(dir)
            .map_err(|e| DemoError::Dir(format!("cannot clear {}: {e}", dir.display())))?;
    }
    std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(dir.join(MARKER), "made by fleet-demo\n"))
        .map_err(|e| DemoError::Dir(format!("cannot create {}: {e}", dir.display())))
}

/// Runs the demo until Ctrl-C (or SIGTERM); everything it started is stopped and removed.
pub async fn run(opts: RunOptions) -> Result<(), DemoError> {
    let headless = opts.headless;
    let say = move |s: &str| {
        if headless {
            println!("fleet-demo: {s}");
        } else {
            println!("\x1b[1m==>\x1b[0m {s}");
        }
        let _ = std::io::stdout().flush();
    };
    let mut running = Running::default();
    let outcome = tokio::select! {
        r = demo(&opts, &mut running, &say) => r,
        _ = Shutdown::wait() => Ok(()),
    };
    running.shutdown(&say);
    outcome
}

fn machine(headless: bool, line: &str) {
    if headless {
        println!("FLEET_DEMO {line}");
        let _ = std::io::stdout().flush();
    }
}

async fn demo(
    opts: &RunOptions,
    running: &mut Running,
    say: &dyn Fn(&str),
) -> Result<(), DemoError> {
    prereq::check()?;
    if std::net::TcpListener::bind(opts.listen).is_err() {
        return Err(DemoError::AddressInUse(opts.listen));
    }
    let bins = Bins::beside_me()?;
    let real: Vec<String> = (1..=opts.agents)
        .map(|i| format!("pi-lab-{i:02}"))
        .collect();
    running.namespaces = real
        .iter()
        .map(|d| stack::namespace_of(&opts.instance, d))
        .collect();
    // Containers a previous demo left behind (killed without Ctrl-C) go first.
    stack::remove_namespaces(&running.namespaces);
    prepare_dir(&opts.dir)?;
    let dir = &opts.dir;

    say("building the example images from busybox (fleet-example/app, fleet-example/exporter) …");
    images::build_all(&dir.join("build"))?;

    let inv = Inventory {
        real: real.clone(),
        simulated: fleet_controller_ids(opts.simulated),
    };
    let (repo, first) = DemoRepo::create(dir, &opts.examples, &inv, &opts.bake)?;
    running
        .gitd
        .push(GitDaemon::start(&dir.join("git/primary"))?);
    running
        .gitd
        .push(GitDaemon::start(&dir.join("git/mirror"))?);
    let endpoints: Vec<String> = running.gitd.iter().map(|g| g.url("fleet.git")).collect();
    say(&format!(
        "fleet repository {} (from {}), served by git daemon at {} (primary) and {} (mirror)",
        repo.work.display(),
        opts.examples.display(),
        endpoints[0],
        endpoints[1]
    ));

    let ctl = Controller::start(&bins, dir, opts.listen, &endpoints).await?;
    say(&format!(
        "controller on {} (SQLite in {}); log in as admin / {}",
        ctl.url,
        dir.join("controller").display(),
        ctl.admin_password
    ));
    machine(
        opts.headless,
        &format!(
            "ready url={} token={} password={} dir={} namespaces={} ca={} spki={}",
            ctl.url,
            ctl.admin_token,
            ctl.admin_password,
            dir.display(),
            running.namespaces.join(","),
            ctl.ca_file.display(),
            ctl.spki
        ),
    );
    say(&format!(
        "HTTPS with a lab CA made for this run: {} (agents, fleet-sim and fleetctl trust it; a \
         browser warns until you import it, or start Chromium with \
         --ignore-certificate-errors-spki-list={})",
        ctl.ca_file.display(),
        ctl.spki
    ));
    let url = ctl.url.clone();
    let token = ctl.admin_token.clone();
    let ca_file = ctl.ca_file.clone();
    for (d, ns) in real.iter().zip(&running.namespaces) {
        running
            .agents
            .push(stack::start_agent(&bins, dir, ns, d, &endpoints, &ctl)?);
    }
    running.sim = Some(stack::start_sim(&bins, dir, &ctl, opts.simulated)?);
    running.controller = Some(ctl);
    say(&format!(
        "{} real agents on Docker ({}) and {} simulated devices (fleet-sim) enrolled with a bootstrap token",
        real.len(),
        real.join(", "),
        opts.simulated
    ));

    let watcher = Watcher::new(&url, &token, &ca_file);
    let total = real.len() + opts.simulated;
    say(&format!(
        "release 1 ({}) goes out in waves: canary (the real agents) → 5% → 25% → 100%",
        &first[..12]
    ));
    converge(&watcher, running, total, &first, opts.headless).await?;
    let (n, second) = repo.release(dir, ReleaseKind::Good)?;
    machine(opts.headless, &format!("released n={n} sha={second}"));
    say(&format!(
        "release {n} ({}) committed and pushed: watch its waves below",
        &second[..12]
    ));
    print_help(opts, &bins, &url, &token, &ca_file);
    show_progress(&watcher, running, opts.headless).await;
    Ok(())
}

fn fleet_controller_ids(n: usize) -> Vec<String> {
    let width = n.to_string().len().max(3);
    (1..=n).map(|i| format!("sim-{i:0width$}")).collect()
}

/// Shows progress until every device runs `sha`.
async fn converge(
    w: &Watcher,
    running: &mut Running,
    total: usize,
    sha: &str,
    headless: bool,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut screen = Screen::new(headless);
    let short = &sha[..12];
    loop {
        check_children(running)?;
        if let Some(s) = w.snapshot().await {
            screen.show(&s.lines);
            let on = s
                .versions
                .iter()
                .filter(|(v, _)| short.starts_with(v.as_str()))
                .map(|(_, n)| *n)
                .sum::<u64>();
            if on as usize >= total {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(DemoError::Stuck(format!(
                "release {short} did not reach all {total} devices in 10 minutes; see the logs in the demo directory"
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn check_children(running: &mut Running) -> Result<(), DemoError> {
    let procs = running
        .agents
        .iter_mut()
        .chain(running.sim.iter_mut())
        .chain(running.controller.iter_mut().map(|c| &mut c.proc));
    for p in procs {
        if let Some(status) = p.exited() {
            return Err(DemoError::Stuck(format!(
                "{} exited ({status}); its log: {}",
                p.name,
                p.log.display()
            )));
        }
    }
    Ok(())
}

async fn show_progress(w: &Watcher, running: &mut Running, headless: bool) {
    let mut screen = Screen::new(headless);
    loop {
        if let Err(e) = check_children(running) {
            println!("fleet-demo: {e}");
            return;
        }
        if let Some(s) = w.snapshot().await {
            screen.show(&s.lines);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Redraws a block of lines in place on a terminal; prints changes only when headless.
struct Screen {
    headless: bool,
    last: Vec<String>,
}

impl Screen {
    fn new(headless: bool) -> Screen {
        Screen {
            headless,
            last: Vec::new(),
        }
    }

    fn show(&mut self, lines: &[String]) {
        if lines == self.last.as_slice() {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.headless {
            for l in lines {
                let _ = writeln!(out, "progress: {l}");
            }
        } else {
            if !self.last.is_empty() {
                let _ = write!(out, "\x1b[{}A\x1b[J", self.last.len());
            }
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        }
        let _ = out.flush();
        self.last = lines.to_vec();
    }
}

fn print_help(opts: &RunOptions, bins: &Bins, url: &str, token: &str, ca: &std::path::Path) {
    let demo = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "fleet-demo".into());
    let text = format!(
        "
  Watch:     the waves below; the dashboard at {url}/ (admin / password above);
             docker ps --filter label=fleet.namespace={ns} (one real device's containers)
  Try, in another terminal:
    export FLEET_URL={url} FLEET_TOKEN={token} FLEET_CA_FILE={ca} PATH={bindir}:$PATH
    fleetctl status
    fleetctl rollouts list
    fleetctl devices list
    fleetctl stop --reason \"trying the emergency stop\"   # every device holds
    fleetctl resume
    {demo} release --dir {dir}          # commit another good release
    {demo} release --dir {dir} --bad    # a release whose health check fails: the canaries
                                        # roll back and the rollout halts
  Logs:      {dir}/*.log
  Ctrl-C stops everything and removes the demo's containers.
",
        ns = stack::namespace_of(&opts.instance, "pi-lab-01"),
        ca = ca.display(),
        dir = opts.dir.display(),
        bindir = bins
            .fleetctl
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    if opts.headless {
        for l in text.lines() {
            println!("fleet-demo: {l}");
        }
    } else {
        println!("{text}");
    }
}
