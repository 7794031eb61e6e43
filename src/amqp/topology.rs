//! Declares the AMQP topology of CONTRACT §2, idempotently: quorum queues, the
//! dead-letter exchange and queue, the outcome and event exchanges. A queue that already
//! exists with other arguments is used as it is (with a warning) instead of failing.

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

pub async fn declare(conn: &Connection, cfg: &AmqpConfig) -> lapin::Result<()> {
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        &cfg.dead_exchange,
        ExchangeKind::Fanout,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        &cfg.outcomes_exchange,
        ExchangeKind::Topic,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        &cfg.events_exchange,
        ExchangeKind::Topic,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        &cfg.control_exchange,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = ch.close(200, "topology declared").await;
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
        &cfg.dead_queue,
        &cfg.dead_exchange,
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = ch.close(200, "bound").await;
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
    match ch.queue_declare(name, opts, args).await {
        Ok(_) => {
            let _ = ch.close(200, "declared").await;
            Ok(())
        }
        Err(e) => {
            tracing::warn!(queue = name, error = %e, "queue exists with other arguments; using it as it is");
            let ch = conn.create_channel().await?;
            ch.queue_declare(
                name,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
            let _ = ch.close(200, "checked").await;
            Ok(())
        }
    }
}
