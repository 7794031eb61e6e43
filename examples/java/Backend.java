// A backend's side of sca-dispatch with the RabbitMQ Java client: publish a challenge to
// sca.challenges with publisher confirms, reply_to (a private queue) and correlation_id,
// then wait for its outcome on that queue.
//
//   javac -cp /usr/share/java/amqp-client.jar Backend.java
//   java -cp /usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-nop.jar:. \
//     Backend AMQP_URI QUEUE CHALLENGE_ID USER_ID PUBLIC_KEY_B64 EXPECTED_OUTCOME
//
// Prints the outcome JSON; exits 0 when it arrived and its outcome is EXPECTED_OUTCOME.

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public final class Backend {
    /** JSON string literal (enough for ids, tokens and keys). */
    static String q(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 6) {
            System.err.println("usage: Backend AMQP_URI QUEUE CHALLENGE_ID USER_ID PUBLIC_KEY_B64 EXPECTED_OUTCOME");
            System.exit(2);
        }
        String uri = args[0], queue = args[1], id = args[2], user = args[3], key = args[4], expect = args[5];
        String challenge = "{\"v\":1,\"challenge_id\":" + q(id) + ",\"user_id\":" + q(user)
            + ",\"kind\":\"login\",\"created_at\":" + q(Instant.now().toString())
            + ",\"ttl_seconds\":120,\"locale\":\"en\",\"devices\":[{\"device_id\":\"d-pixel\","
            + "\"platform\":\"fcm\",\"token\":\"example-fcm-token\",\"name\":\"Pixel\",\"public_key\":" + q(key) + "}]}";

        ConnectionFactory f = new ConnectionFactory();
        f.setUri(uri);
        f.setConnectionTimeout(10_000);
        f.setHandshakeTimeout(10_000);
        try (Connection conn = f.newConnection("sca-dispatch Java example")) {
            Channel ch = conn.createChannel();
            // A private, server-named queue for the outcome.
            String replyQueue = ch.queueDeclare("", false, true, true, null).getQueue();
            BlockingQueue<String> outcomes = new ArrayBlockingQueue<>(16);
            ch.basicConsume(replyQueue, true, new DefaultConsumer(ch) {
                @Override
                public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) {
                    if (id.equals(props.getCorrelationId())) {
                        outcomes.offer(new String(body, StandardCharsets.UTF_8));
                    }
                }
            });
            AtomicBoolean returned = new AtomicBoolean(false);
            ch.addReturnListener(r -> returned.set(true));
            ch.confirmSelect();
            AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                .contentType("application/json")
                .deliveryMode(2)
                .replyTo(replyQueue)
                .correlationId(id)
                .build();
            // mandatory: an unroutable challenge comes back instead of vanishing.
            ch.basicPublish("", queue, true, props, challenge.getBytes(StandardCharsets.UTF_8));
            ch.waitForConfirmsOrDie(10_000);
            if (returned.get()) {
                System.err.println("the challenge was unroutable (no queue " + queue + ")");
                System.exit(1);
            }
            System.err.println("published " + id + " (confirmed); waiting for its outcome on " + replyQueue);
            String outcome = outcomes.poll(30, TimeUnit.SECONDS);
            if (outcome == null) {
                System.err.println("no outcome for " + id + " within 30 s");
                System.exit(1);
            }
            System.out.println(outcome);
            Matcher m = Pattern.compile("\"outcome\"\\s*:\\s*\"([a-z_]+)\"").matcher(outcome);
            if (!m.find() || !m.group(1).equals(expect)) {
                System.err.println("expected outcome " + expect + ", got " + outcome);
                System.exit(1);
            }
        }
    }
}
