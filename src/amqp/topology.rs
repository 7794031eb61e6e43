//! Declares the AMQP topology of CONTRACT §2, idempotently: quorum queues, the
//! dead-letter exchange and queue, the outcome and event exchanges; in cluster mode also
//! the consistent-hash exchange and the partition queues of CONTRACT §10. A queue that
//! already exists with other arguments is used as it is (with a warning) instead of
//! failing.

use crate::config::AmqpConfig;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// The arguments of a quorum queue, dead-lettering to `dlx` if given.
pub fn quorum_args(dlx: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(dlx) = dlx {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.into()),
        );
    }
    args
}

/// The plugin cluster mode needs, named in the start-up error when it is missing.
pub const HASH_PLUGIN: &str = "rabbitmq_consistent_hash_exchange";

/// Why the cluster topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum ClusterTopologyError {
    #[error("the RabbitMQ plugin {HASH_PLUGIN} is not enabled: cluster mode needs its exchange type x-consistent-hash (enable it with `rabbitmq-plugins enable {HASH_PLUGIN}`): {0}")]
    PluginMissing(String),
    #[error("declaring the cluster topology: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Declares the consistent-hash exchange and the partition queues (quorum, dead-letter
/// to `sca.dead`, single active consumer), each bound with weight 1.
pub async fn declare_cluster(
    conn: &Connection,
    cfg: &AmqpConfig,
    names: &crate::cluster::Names,
) -> Result<(), ClusterTopologyError> {
    let ch = conn.create_channel().await?;
    if let Err(e) = ch
        .exchange_declare(
            names.exchange.as_str().into(),
            ExchangeKind::Custom("x-consistent-hash".into()),
            durable_exchange(),
            FieldTable::default(),
        )
        .await
    {
        let text = e.to_string();
        // RabbitMQ answers an unknown exchange type with COMMAND_INVALID ("invalid
        // exchange type"), which closes the connection.
        if text.contains("exchange type") || text.contains("COMMAND_INVALID") {
            return Err(ClusterTopologyError::PluginMissing(text));
        }
        return Err(e.into());
    }
    let _ = ch.close(200, "declared".into()).await;
    for q in &names.partitions {
        let mut args = quorum_args(Some(&cfg.dead_exchange));
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        declare_queue(conn, q, args).await?;
    }
    let ch = conn.create_channel().await?;
    for q in &names.partitions {
        ch.queue_bind(
            q.as_str().into(),
            names.exchange.as_str().into(),
            "1".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let _ = ch.close(200, "bound".into()).await;
    Ok(())
}

/// Start-up check in cluster mode: declares the cluster topology once on a connection
/// of its own. `Err` only for a missing plugin; an unreachable broker is left to the
/// supervisor, which keeps trying (and says so).
pub async fn check_cluster(
    url: &str,
    cfg: &AmqpConfig,
    names: &crate::cluster::Names,
) -> Result<(), String> {
    let Ok(conn) = super::client::connect(url, "sca-dispatch start-up check").await else {
        return Ok(());
    };
    let r = declare_cluster(&conn, cfg, names).await;
    let _ = conn.close(200, "checked".into()).await;
    match r {
        Err(e @ ClusterTopologyError::PluginMissing(_)) => Err(e.to_string()),
        _ => Ok(()),
    }
}

pub async fn declare(conn: &Connection, cfg: &AmqpConfig) -> lapin::Result<()> {
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        cfg.dead_exchange.as_str().into(),
        ExchangeKind::Fanout,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        cfg.outcomes_exchange.as_str().into(),
        ExchangeKind::Topic,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        cfg.events_exchange.as_str().into(),
        ExchangeKind::Topic,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        cfg.control_exchange.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = ch.close(200, "topology declared".into()).await;
    declare_queue(conn, &cfg.dead_queue, quorum_args(None)).await?;
    declare_queue(
        conn,
        &cfg.challenges_queue,
        quorum_args(Some(&cfg.dead_exchange)),
    )
    .await?;
    declare_queue(conn, &cfg.responses_queue, quorum_args(None)).await?;
    let ch = conn.create_channel().await?;
    ch.queue_bind(
        cfg.dead_queue.as_str().into(),
        cfg.dead_exchange.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = ch.close(200, "bound".into()).await;
    Ok(())
}

/// Declares a durable queue; if it exists with different arguments (PRECONDITION_FAILED,
/// which closes the channel), checks it exists passively and carries on.
async fn declare_queue(conn: &Connection, name: &str, args: FieldTable) -> lapin::Result<()> {
    let ch = conn.create_channel().await?;
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    match ch.queue_declare(name.into(), opts, args).await {
        Ok(_) => {
            let _ = ch.close(200, "declared".into()).await;
            Ok(())
        }
        Err(e) => {
            tracing::warn!(queue = name, error = %e, "queue exists with other arguments; using it as it is");
            let ch = conn.create_channel().await?;
            ch.queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
            let _ = ch.close(200, "checked".into()).await;
            Ok(())
        }
    }
}
