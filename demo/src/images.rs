//! The example fleet's images, built locally: `FROM scratch` with Debian's static busybox
//! (httpd serves the app, wget runs its healthcheck). No registry is involved; `docker build`
//! reuses its cache, so a second demo builds in a second.

use std::path::Path;

use crate::cmd::{self, CmdError};
use crate::prereq::BUSYBOX;

/// The images the example fleet repository and the demo's safe-mode stack name.
pub const IMAGES: &[&str] = &[
    "fleet-example/app:1.0.0",
    "fleet-example/exporter:1.0.0",
    "fleet-demo/safe-mode:1.0.0",
];

/// Every image is the same busybox root; compose gives the app and exporter their commands.
const DOCKERFILE: &str = "FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nLABEL fleet.demo=1\nCMD [\"/bin/httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/srv\"]\n";

const APPLETS: &[&str] = &[
    "sh", "httpd", "wget", "sleep", "echo", "cat", "true", "false", "mkdir", "ls",
];

/// Image building failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Preparing the build context.
    #[error("preparing the image build in {dir}: {source}")]
    Context {
        /// Where.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// `docker build` failed.
    #[error(transparent)]
    Build(#[from] CmdError),
}

/// Builds every image in [`IMAGES`], using `dir` as the build context.
pub fn build_all(dir: &Path) -> Result<(), ImageError> {
    let ctx = |source| ImageError::Context {
        dir: dir.display().to_string(),
        source,
    };
    let bin = dir.join("rootfs/bin");
    std::fs::create_dir_all(&bin).map_err(ctx)?;
    std::fs::create_dir_all(dir.join("rootfs/tmp")).map_err(ctx)?;
    std::fs::create_dir_all(dir.join("rootfs/srv")).map_err(ctx)?;
    std::fs::write(dir.join("rootfs/srv/healthz"), "ok\n").map_err(ctx)?;
    let busybox = bin.join("busybox");
    if !busybox.exists() {
        std::fs::copy(BUSYBOX, &busybox).map_err(ctx)?;
    }
    for applet in APPLETS {
        let link = bin.join(applet);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("busybox", link).map_err(ctx)?;
        }
    }
    for image in IMAGES {
        // The app and the exporter get their command from compose; the safe-mode stand-in
        // serves /srv with a healthcheck of its own.
        let dockerfile = DOCKERFILE;
        let file = dir.join(format!("Dockerfile.{}", image.replace(['/', ':'], "_")));
        std::fs::write(&file, dockerfile).map_err(ctx)?;
        let file_s = file.display().to_string();
        let dir_s = dir.display().to_string();
        cmd::run(
            "env",
            &[
                "DOCKER_BUILDKIT=0",
                "docker",
                "build",
                "-q",
                "-f",
                &file_s,
                "-t",
                image,
                &dir_s,
            ],
        )?;
    }
    Ok(())
}
