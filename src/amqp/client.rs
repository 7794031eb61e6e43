//! A small AMQP client for the tooling that plays the backend's part — the demo, the load
//! generator, benchmarks and tests — and for the daemon's own connection: connect on the
//! tokio runtime, and tap a topic exchange into an exclusive queue.

use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, Consumer, ExchangeKind};

/// Connects on the current tokio runtime (lapin's default runtime, bound to the runtime
/// this is called from); `name` shows in `rabbitmqctl list_connections`. lapin's own
/// recovery stays off: the supervisor (`amqp::supervise`) reconnects, declares and
/// fences.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props).await
}

/// Everything published to the topic `exchange` (declared if missing) from now on,
/// through an exclusive, auto-deleted queue, without acks.
pub async fn tap(conn: &Connection, exchange: &str) -> lapin::Result<Consumer> {
    let ch = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await?;
    ch.queue_bind(
        q.name().clone(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    ch.basic_consume(q.name().clone(), "".into(), no_ack, FieldTable::default())
        .await
}
