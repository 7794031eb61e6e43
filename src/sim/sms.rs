//! sms simulator. Being written; see its issue.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Runs the simulator until Ctrl-C, printing its address and files.
pub async fn run_standalone(_addr: SocketAddr, _dir: PathBuf) -> anyhow::Result<()> {
    anyhow::bail!("the sms simulator is not built yet")
}
