#!/usr/bin/env python3
"""Writes deploy/grafana/sca-dispatch.json (the Grafana dashboard) from the panel list
below. Edit here, run it, commit both; scripts/check-dashboard.sh proves every query on a
real Prometheus."""
import json
import pathlib

OUT = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "sca-dispatch.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
I = 'instance=~"$instance"'
RI = "$__rate_interval"

# (title, unit, [(expr, legend)], kind, description)
ROWS = [
    ("Challenges", [
        ("Challenges received by kind", "reqps", [
            (f"sum by (kind) (rate(sca_challenges_received_total{{{I}}}[{RI}]))", "{{kind}}")],
         "timeseries", "Valid challenges consumed from sca.challenges."),
        ("Outcomes by kind and outcome", "reqps", [
            (f"sum by (kind, outcome) (rate(sca_outcomes_total{{{I}}}[{RI}]))", "{{kind}} {{outcome}}")],
         "timeseries", "Outcomes published to sca.outcomes (one per challenge)."),
        ("Outcomes by channel", "reqps", [
            (f"sum by (channel) (rate(sca_outcomes_total{{{I}}}[{RI}]))", "{{channel}}")],
         "timeseries", "push, sms, offline, or null (expired, rejected, ...)."),
        ("Decision latency by channel", "s", [
            (f"histogram_quantile(0.5, sum by (le, channel) (rate(sca_decision_latency_seconds_bucket{{{I}}}[{RI}])))", "p50 {{channel}}"),
            (f"histogram_quantile(0.9, sum by (le, channel) (rate(sca_decision_latency_seconds_bucket{{{I}}}[{RI}])))", "p90 {{channel}}"),
            (f"histogram_quantile(0.99, sum by (le, channel) (rate(sca_decision_latency_seconds_bucket{{{I}}}[{RI}])))", "p99 {{channel}}")],
         "timeseries", "From dispatch to the user's decision (mostly human time)."),
        ("Challenges in flight", "short", [
            (f"sum by (instance) (sca_challenges_in_flight{{{I}}})", "{{instance}}"),
            (f"sum by (instance) (sca_challenges_held{{{I}}})", "held {{instance}}")],
         "timeseries", "In flight: held and undecided, bounded by amqp.prefetch x amqp.consumers per instance. Held: pending plus retained after their outcome, bounded by challenge.max_held (intake pauses there)."),
        ("Challenges rejected by reason", "reqps", [
            (f"sum by (reason) (rate(sca_challenges_rejected_total{{{I}}}[{RI}]))", "{{reason}}")],
         "timeseries", "Messages dead-lettered to sca.dead."),
    ]),
    ("Push", [
        ("Push requests by provider and result", "reqps", [
            (f"sum by (provider, result) (rate(sca_push_requests_total{{{I}}}[{RI}]))", "{{provider}} {{result}}")],
         "timeseries", "Requests to APNs/FCM/Push Kit and how they ended."),
        ("Push requests by app and result", "reqps", [
            (f"sum by (app, result) (rate(sca_push_requests_total{{{I}}}[{RI}]))", "{{app}} {{result}}")],
         "timeseries", "Per app (default = the top-level [apns]/[fcm]/[hms]; others: [apps.<name>]): one app's failing credentials show here."),
        ("Push latency by provider", "s", [
            (f"histogram_quantile(0.5, sum by (le, provider) (rate(sca_push_request_duration_seconds_bucket{{{I}}}[{RI}])))", "p50 {{provider}}"),
            (f"histogram_quantile(0.99, sum by (le, provider) (rate(sca_push_request_duration_seconds_bucket{{{I}}}[{RI}])))", "p99 {{provider}}")],
         "timeseries", "One HTTP/2 request to the provider."),
        ("Push failure ratio by provider", "percentunit", [
            (f'1 - sum by (provider) (rate(sca_push_requests_total{{{I}, result=~"delivered|token_gone"}}[{RI}])) / sum by (provider) (rate(sca_push_requests_total{{{I}}}[{RI}]))', "{{provider}}")],
         "timeseries", "Alert ScaDispatchPushFailureRatio fires above 5%."),
        ("Device tokens invalid", "reqps", [
            (f'sum by (provider) (rate(sca_push_requests_total{{{I}, result="token_gone"}}[{RI}]))', "{{provider}}")],
         "timeseries", "Tokens rejected as gone: event device.token_invalid; backends should unbind them."),
        ("Provider token renewals", "short", [
            (f"sum by (provider) (increase(sca_provider_token_renewals_total{{{I}}}[$__range]))", "{{provider}}")],
         "stat", "APNs provider JWTs and FCM OAuth2 tokens minted in the range."),
    ]),
    ("SMS and codes", [
        ("SMS sent / failed / refused", "reqps", [
            (f"sum by (result) (rate(sca_sms_total{{{I}}}[{RI}]))", "{{result}}")],
         "timeseries", "refused = an abuse limit said no."),
        ("OTP verifications by result", "reqps", [
            (f"sum by (result) (rate(sca_otp_verifications_total{{{I}}}[{RI}]))", "{{result}}")],
         "timeseries", "ok, wrong, locked, expired, refused."),
        ("Rate-limit refusals by limit", "reqps", [
            (f"sum by (limit) (rate(sca_rate_limited_total{{{I}}}[{RI}]))", "{{limit}}")],
         "timeseries", "user_challenges, sms_window, sms_unconfirmed_block, sms_country; a spike of sms_* is SMS pumping."),
    ]),
    ("RabbitMQ", [
        ("AMQP connected", "short", [
            (f"min by (instance) (sca_amqp_connected{{{I}}})", "{{instance}}")],
         "stat", "1 while connected."),
        ("AMQP reconnects", "short", [
            (f"sum by (instance) (increase(sca_amqp_reconnects_total{{{I}}}[$__range]))", "{{instance}}")],
         "stat", "Connections opened after a loss, in the range."),
        ("Unroutable publishes and publish failures", "reqps", [
            (f"sum by (exchange) (rate(sca_amqp_unroutable_total{{{I}}}[{RI}]))", "unroutable {{exchange}}"),
            (f"sum by (instance) (rate(sca_amqp_publish_failures_total{{{I}}}[{RI}]))", "publish failures {{instance}}")],
         "timeseries", "Unroutable: no queue bound (a reply_to gone, a backend binding missing). Failures are retried."),
        ("Queue depth (broker)", "short", [
            ('sum by (queue) (rabbitmq_queue_messages_ready{queue=~"$queue"})', "ready {{queue}}"),
            ('sum by (queue) (rabbitmq_queue_messages_unacked{queue=~"$queue"})', "unacked {{queue}}")],
         "timeseries", "From RabbitMQ's rabbitmq_prometheus plugin (/metrics/per-object). Unacked ~ in flight."),
    ]),
    ("HTTP API", [
        ("HTTP requests by route and status", "reqps", [
            (f"sum by (route, status) (rate(sca_http_requests_total{{{I}}}[{RI}]))", "{{route}} {{status}}")],
         "timeseries", "Decisions, codes, SMS requests, reads, health."),
    ]),
]


def panel(pid, title, unit, targets, kind, desc, x, y):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"h": 8, "w": 12 if kind == "timeseries" else 6, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": e, "legendFormat": l}
            for i, (e, l) in enumerate(targets)
        ],
    }
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi"}}
    else:
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    return p


panels, pid, y = [], 1, 0
for row, items in ROWS:
    panels.append({"id": pid, "type": "row", "title": row, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    pid += 1
    y += 1
    x = 0
    for title, unit, targets, kind, desc in items:
        p = panel(pid, title, unit, targets, kind, desc, x, y)
        w = p["gridPos"]["w"]
        if x + w > 24:
            x, y = 0, y + 8
            p["gridPos"]["x"], p["gridPos"]["y"] = x, y
        panels.append(p)
        pid += 1
        x += w
    y += 8

dashboard = {
    "__inputs": [],
    "uid": "sca-dispatch",
    "title": "sca-dispatch",
    "description": "Strong customer authentication dispatch: challenges, pushes, SMS, broker, API. Runbook: docs/operations.md.",
    "tags": ["sca-dispatch", "psd2"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "graphTooltip": 1,
    "refresh": "30s",
    "time": {"from": "now-1h", "to": "now"},
    "links": [{"title": "Runbook", "type": "link", "url": "docs/operations.md"}],
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1},
        {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
         "query": {"query": "label_values(sca_amqp_connected, instance)", "refId": "instance"},
         "definition": "label_values(sca_amqp_connected, instance)",
         "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"},
         "refresh": 2, "sort": 1},
        {"name": "queue", "label": "Queues (regex)", "type": "textbox", "query": "sca[.].*",
         "current": {"text": "sca[.].*", "value": "sca[.].*"}},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {OUT.relative_to(OUT.parent.parent.parent)}: {sum(len(p.get('targets', [])) for p in panels)} queries")
