//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`):
//! a private `chromedriver` on a loopback port for each test, screenshots saved as artifacts.
//! Without Chromium the browser tests skip loudly, or fail when `FLEET_REQUIRE_CHROMIUM=1`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// A browser session and the driver behind it (killed on drop).
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Child,
    artifacts: PathBuf,
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// Where screenshots go: `$FLEET_ARTIFACTS_DIR/NAME`, else `target/test-artifacts/NAME`.
pub fn artifacts_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("FLEET_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("test-artifacts")
        });
    base.join(name)
}

impl Browser {
    /// Starts chromedriver and a headless Chromium, or `None` (skip) when they are missing.
    pub async fn start(test: &str) -> Option<Browser> {
        Self::start_with(test, &[]).await
    }

    /// As [`Browser::start`], with more Chromium arguments (e.g. the lab certificate's key to
    /// trust, `--ignore-certificate-errors-spki-list=…`).
    pub async fn start_with(test: &str, extra_args: &[String]) -> Option<Browser> {
        let driver_bin = find(&["chromedriver"]);
        let chromium = find(&["chromium", "chromium-browser", "google-chrome"]);
        let (Some(driver_bin), Some(chromium)) = (driver_bin, chromium) else {
            if std::env::var("FLEET_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
                panic!("{test}: FLEET_REQUIRE_CHROMIUM=1 but chromium or chromedriver is missing (apt-get install chromium chromium-driver)");
            }
            eprintln!("\n*** SKIP {test}: no chromium/chromedriver (apt-get install chromium chromium-driver) ***\n");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{test}: cannot start {}: {e}", driver_bin.display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{test}: chromedriver never listened"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra_args.iter().cloned());
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": args,
            }),
        );
        let client = ClientBuilder::native()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("{test}: cannot open a Chromium session: {e}"));
        let artifacts = artifacts_dir(test);
        std::fs::create_dir_all(&artifacts).expect("artifacts dir");
        Some(Browser {
            client,
            driver,
            artifacts,
        })
    }

    /// Saves a screenshot of the page as `NAME.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let p = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&p, png).expect("write screenshot");
        eprintln!("screenshot: {}", p.display());
    }

    /// Text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element `{css}`: {e}"))
            .text()
            .await
            .expect("text")
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element `{css}` to click: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click `{css}`: {e}"));
    }

    /// Types `text` into the first element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element `{css}` to type into: {e}"))
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("cannot type into `{css}`: {e}"));
    }

    /// Whether the first element matching `css` is shown.
    pub async fn displayed(&self, css: &str) -> bool {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element `{css}`: {e}"))
            .is_displayed()
            .await
            .expect("is_displayed")
    }

    /// Whether an element matches `css`.
    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
            .is_empty()
    }

    /// Waits until `check` holds for the text of `css` (up to `limit`); returns the text.
    pub async fn wait_text(
        &self,
        css: &str,
        limit: Duration,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if check(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: `{css}` reads {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the session.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
