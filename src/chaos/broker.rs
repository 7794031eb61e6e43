//! The broker side of the faults: `rabbitmqctl` (stop and start the RabbitMQ
//! application, list and close connections) and a guard that starts the application
//! again when it is dropped, so a run that fails or panics never leaves the shared broker
//! stopped.

use anyhow::Context;
use std::process::Stdio;
use std::time::Duration;

/// One `rabbitmqctl` call, at most (`await_startup` waits inside it).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Output kept from a failing call, for the error.
const MAX_OUTPUT: usize = 2000;

/// A broker connection as `rabbitmqctl list_connections` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConnection {
    /// The connection's Erlang pid, as `close_connection` takes it.
    pub pid: String,
    /// The `connection_name` client property (empty when the client set none).
    pub name: String,
}

/// `rabbitmqctl`, found on the `PATH` (or the one named by `SCA_RABBITMQCTL`).
#[derive(Debug, Clone)]
pub struct Rabbitmqctl {
    program: String,
}

impl Default for Rabbitmqctl {
    fn default() -> Self {
        Rabbitmqctl {
            program: std::env::var("SCA_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into()),
        }
    }
}

fn clip(s: &[u8]) -> String {
    let t = String::from_utf8_lossy(s);
    let t = t.trim();
    match t.char_indices().nth(MAX_OUTPUT) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

impl Rabbitmqctl {
    /// Runs `rabbitmqctl ARGS`; its standard output, or an error naming the call.
    pub async fn call(&self, args: &[&str]) -> anyhow::Result<String> {
        let what = format!("{} {}", self.program, args.join(" "));
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(CALL_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("{what}: no answer within {} s", CALL_TIMEOUT.as_secs()))?
            .with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            anyhow::bail!(
                "{what} failed ({}): {} {}",
                out.status,
                clip(&out.stdout),
                clip(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `stop_app`: the node stays up, every AMQP connection is closed and the listener
    /// refuses new ones.
    pub async fn stop_app(&self) -> anyhow::Result<()> {
        self.call(&["stop_app"]).await.map(drop)
    }

    /// `start_app`, then `await_startup`.
    pub async fn start_app(&self) -> anyhow::Result<()> {
        self.call(&["start_app"]).await?;
        self.await_startup().await
    }

    pub async fn await_startup(&self) -> anyhow::Result<()> {
        self.call(&["await_startup"]).await.map(drop)
    }

    /// Every client connection with its pid and connection name.
    pub async fn connections(&self) -> anyhow::Result<Vec<BrokerConnection>> {
        let out = self
            .call(&[
                "list_connections",
                "pid",
                "client_properties",
                "-q",
                "--no-table-headers",
            ])
            .await?;
        Ok(parse_connections(&out))
    }

    /// Closes one connection from the broker's side, with `reason` told to the client.
    pub async fn close_connection(&self, pid: &str, reason: &str) -> anyhow::Result<()> {
        self.call(&["close_connection", pid, reason])
            .await
            .map(drop)
    }
}

/// Reads `list_connections pid client_properties`: one line per connection, the pid
/// (`<rabbit@host.1.2.0>`, as `close_connection` takes it), a tab, and the client
/// properties as an Erlang term holding `{"connection_name","…"}`.
pub fn parse_connections(text: &str) -> Vec<BrokerConnection> {
    const KEY: &str = "{\"connection_name\",\"";
    text.lines()
        .filter_map(|line| {
            let (pid, props) = line.split_once('\t')?;
            let pid = pid.trim();
            if !(pid.starts_with('<') && pid.ends_with('>')) {
                return None;
            }
            let name = props
                .find(KEY)
                .map(|at| &props[at + KEY.len()..])
                .and_then(|rest| rest.find("\"}").map(|end| &rest[..end]))
                .unwrap_or("");
            Some(BrokerConnection {
                pid: pid.to_string(),
                name: name.to_string(),
            })
        })
        .collect()
}

/// Starts the RabbitMQ application again on drop unless [`StartGuard::disarm`]ed: armed
/// before `stop_app`, disarmed once `start_app` succeeded.
#[derive(Debug, Default)]
pub struct StartGuard {
    armed: bool,
    ctl: Rabbitmqctl,
}

impl StartGuard {
    pub fn arm(&mut self) {
        self.armed = true;
    }

    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Blocking on purpose: a drop while unwinding cannot await, and the broker must
        // be back whatever happened.
        for args in [&["start_app"][..], &["await_startup"][..]] {
            let status = std::process::Command::new(&self.ctl.program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !status.is_ok_and(|s| s.success()) {
                eprintln!(
                    "chaos: `{} {}` failed; start RabbitMQ by hand",
                    self.ctl.program,
                    args.join(" ")
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pids_and_connection_names() {
        let t = "<rabbit@h.1.2.0>\t[{\"capabilities\",[{\"basic.nack\",true}]},{\"connection_name\",\"sca-dispatch q pid 7\"},{\"product\",\"lapin\"}]\n\
                 <rabbit@h.1.3.0>\t[{\"product\",\"other\"}]\n\
                 garbage line\n";
        let c = parse_connections(t);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].name, "sca-dispatch q pid 7");
        assert_eq!(c[0].pid, "<rabbit@h.1.2.0>");
        assert_eq!(c[1].name, "");
        assert!(parse_connections("").is_empty());
    }
}
