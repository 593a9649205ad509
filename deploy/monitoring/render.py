#!/usr/bin/env python3
"""Writes the service's Prometheus alerting and recording rules, with a deployment's thresholds.

    python3 deploy/monitoring/render.py            # rules.yml and ../k8s/prometheusrule.yaml
    python3 deploy/monitoring/render.py --out DIR  # DIR/rules.yml and DIR/prometheusrule.yaml
    python3 deploy/monitoring/render.py --check    # fails if the two committed files are stale

Every setting is an environment variable with a default (the table in RUNBOOK.md explains each);
the committed files hold the defaults. Python's standard library only.
"""

import argparse
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent

# (variable, default, what it is). The defaults suit a deployment of a few api replicas and a
# pool of workers serving files up to a few GiB; RUNBOOK.md says why each is what it is.
SETTINGS = [
    ("MD5_API_SELECTOR", 'job="md5-api"', "the label matcher of the api replicas' scrape targets"),
    ("MD5_WORKER_SELECTOR", 'job="md5-worker"', "the label matcher of the workers' scrape targets"),
    ("MD5_ALERT_FOR", "", "when set (e.g. 5s), every alert's for: instead of its own (tests)"),
    ("MD5_ALERT_BACKLOG_TASKS", "1000", "queued tasks (or undelivered stream entries) that make a backlog"),
    ("MD5_ALERT_OLDEST_QUEUED_SECONDS", "300", "age of the oldest queued task that is too old"),
    ("MD5_ALERT_P99_SECONDS", "30", "budget of the upload-to-done p99, in seconds"),
    ("MD5_ALERT_5XX_RATIO", "0.05", "share of api answers that are 5xx"),
    ("MD5_ALERT_FREE_MARGIN_BYTES", "10737418240", "free bytes above MIN_FREE_BYTES that make a warning"),
    ("MD5_ALERT_FILL_HOURS", "4", "hours ahead in which a volume filling at today's rate is a warning"),
    ("MD5_ALERT_BOUND_RATIO", "0.9", "share of MAX_CONNECTIONS or MAX_CONCURRENT_UPLOADS in use"),
    ("MD5_ALERT_WEBHOOK_FAILURE_RATIO", "0.5", "share of webhook attempts that fail"),
]


def settings(env):
    return {name: env.get(name, default) for name, default, _ in SETTINGS}


def recording_rules(s):
    worker, api = s["MD5_WORKER_SELECTOR"], s["MD5_API_SELECTOR"]
    return [
        ("md5:tasks_finished:rate5m", f"sum by (status) (rate(md5_tasks_finished_total{{{worker}}}[5m]))"),
        ("md5:hashed_bytes:rate5m", f"sum(rate(md5_hashed_bytes_total{{{worker}}}[5m]))"),
        ("md5:upload_to_done_seconds:p50_5m",
         f"histogram_quantile(0.5, sum by (le) (rate(md5_upload_to_done_seconds_bucket{{{worker}}}[5m])))"),
        ("md5:upload_to_done_seconds:p99_5m",
         f"histogram_quantile(0.99, sum by (le) (rate(md5_upload_to_done_seconds_bucket{{{worker}}}[5m])))"),
        ("md5:http_requests_5xx:ratio_rate5m",
         f'sum(rate(md5_http_requests_total{{{api},status=~"5.."}}[5m]))\n'
         f"/ sum(rate(md5_http_requests_total{{{api}}}[5m]))"),
    ]


def alerts(s):
    """(name, severity, for, expr, summary, description) of every alert."""
    worker, api = s["MD5_WORKER_SELECTOR"], s["MD5_API_SELECTOR"]
    backlog = s["MD5_ALERT_BACKLOG_TASKS"]
    queued = f'max(md5_tasks{{{api},status="queued"}})'
    undelivered = f"max(md5_stream_length{{{api}}} - md5_stream_pending{{{api}}})"
    return [
        ("MD5NoWorkerConsuming", "critical", "2m",
         f"(\n  {queued} > 0\n  or {undelivered} > 0\n)\nunless on() sum(up{{{worker}}}) > 0",
         "Jobs wait and no worker is up to take them",
         "{{ $value }} jobs wait; no worker target is up (none scraped, or all down)."),
        ("MD5WorkerDown", "warning", "5m", f"up{{{worker}}} == 0",
         "A worker is down",
         "{{ $labels.instance }} has not answered its scrape for 5 minutes."),
        ("MD5ApiDown", "critical", "2m", f"up{{{api}}} == 0",
         "An api replica is down",
         "{{ $labels.instance }} has not answered its scrape for 2 minutes."),
        ("MD5NotReady", "critical", "2m", f"md5_ready{{{api}}} == 0",
         "An api replica is not ready: {{ $labels.check }} fails",
         "{{ $labels.instance }}'s {{ $labels.check }} check (as /readyz runs it) has failed for 2 minutes."),
        ("MD5BacklogHigh", "warning", "10m",
         f"(\n  {queued} > {backlog}\n  or {undelivered} > {backlog}\n)",
         "A backlog of jobs is waiting",
         f"{{{{ $value }}}} jobs are queued (threshold {backlog}): the workers do not keep up."),
        ("MD5OldestQueuedTaskOld", "warning", "5m",
         f"max(md5_oldest_queued_task_age_seconds{{{api}}}) > {s['MD5_ALERT_OLDEST_QUEUED_SECONDS']}",
         "The oldest queued task has waited too long",
         "The oldest queued task was created {{ $value | humanizeDuration }} ago."),
        ("MD5UploadToDoneSlow", "warning", "15m",
         f"histogram_quantile(0.99, sum by (le) (rate(md5_upload_to_done_seconds_bucket{{{worker}}}[10m])))\n"
         f"> {s['MD5_ALERT_P99_SECONDS']}",
         "Results come late",
         f"The p99 from upload to done is {{{{ $value | humanizeDuration }}}} "
         f"(budget {s['MD5_ALERT_P99_SECONDS']} s)."),
        ("MD5HighErrorRate", "critical", "10m",
         f'sum(rate(md5_http_requests_total{{{api},status=~"5.."}}[5m]))\n'
         f"/ sum(rate(md5_http_requests_total{{{api}}}[5m]))\n> {s['MD5_ALERT_5XX_RATIO']}",
         "Many api answers are 5xx",
         "{{ $value | humanizePercentage }} of the api's answers are 5xx."),
        ("MD5UploadVolumeFull", "critical", "1m",
         f"md5_upload_volume_free_bytes{{{api}}} < md5_upload_volume_min_free_bytes{{{api}}}",
         "Uploads are refused: the upload volume is under MIN_FREE_BYTES",
         "{{ $labels.instance }} answers 507 to uploads: {{ $value | humanize1024 }}B free."),
        ("MD5UploadVolumeLow", "warning", "5m",
         f"md5_upload_volume_free_bytes{{{api}}} - md5_upload_volume_min_free_bytes{{{api}}}\n"
         f"< {s['MD5_ALERT_FREE_MARGIN_BYTES']}",
         "The upload volume is close to MIN_FREE_BYTES",
         "{{ $labels.instance }} has {{ $value | humanize1024 }}B above its reserve."),
        ("MD5UploadVolumeFillingUp", "warning", "30m",
         f"predict_linear(md5_upload_volume_free_bytes{{{api}}}[1h], {s['MD5_ALERT_FILL_HOURS']} * 3600)\n"
         f"< md5_upload_volume_min_free_bytes{{{api}}}",
         "The upload volume will reach MIN_FREE_BYTES soon",
         f"At the last hour's rate {{{{ $labels.instance }}}}'s volume reaches its reserve within "
         f"{s['MD5_ALERT_FILL_HOURS']} hours."),
        ("MD5JobsDeadLettered", "warning", "0m",
         f"sum(increase(md5_jobs_dead_lettered_total{{{worker}}}[1h])) > 0",
         "Jobs were dead-lettered",
         "Jobs failed or crashed their workers MAX_DELIVERIES times in the last hour: "
         "they are failed and copied to the dead-letter stream."),
        ("MD5WebhookDeliveriesFailing", "warning", "15m",
         f'sum(rate(md5_webhook_attempts_total{{{worker},outcome=~"failed|gave_up|gone"}}[15m]))\n'
         f"/ sum(rate(md5_webhook_attempts_total{{{worker}}}[15m]))\n> {s['MD5_ALERT_WEBHOOK_FAILURE_RATIO']}",
         "Webhook deliveries fail",
         "{{ $value | humanizePercentage }} of webhook attempts fail."),
        ("MD5WebhookDeliveriesGivenUp", "warning", "0m",
         f'sum(increase(md5_webhook_attempts_total{{{worker},outcome=~"gave_up|gone"}}[1h])) > 0',
         "Webhook events were given up",
         "Webhook events were given up in the last hour (retries exhausted or endpoint gone)."),
        ("MD5ApiNearConnectionBound", "warning", "5m",
         f"md5_connections_open{{{api}}} / md5_connections_max{{{api}}} > {s['MD5_ALERT_BOUND_RATIO']}",
         "An api replica is near MAX_CONNECTIONS",
         "{{ $labels.instance }} holds {{ $value | humanizePercentage }} of its connections."),
        ("MD5ApiNearUploadSlotBound", "warning", "5m",
         f"md5_upload_slots_in_use{{{api}}} / md5_upload_slots_max{{{api}}} > {s['MD5_ALERT_BOUND_RATIO']}",
         "An api replica is near MAX_CONCURRENT_UPLOADS",
         "{{ $labels.instance }} streams {{ $value | humanizePercentage }} of its upload slots."),
        ("MD5ResultsLogStalled", "critical", "10m",
         f"sum(rate(md5_tasks_finished_total{{{worker}}}[10m])) > 0\n"
         f"unless on() sum(rate(md5_log_flushes_total{{{worker}}}[10m])) > 0",
         "Tasks finish but the results log does not grow",
         "Workers finish tasks and no worker has flushed a line to LOG_FILE for 10 minutes."),
    ]


def block(text, indent):
    pad = " " * indent
    return "|\n" + "\n".join(pad + line for line in text.splitlines())


def quoted(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def groups_yaml(s, indent):
    """The `groups:` list, each line indented by `indent` spaces."""
    lines = ["groups:", "  - name: md5-recording", "    rules:"]
    for record, expr in recording_rules(s):
        lines += [f"      - record: {record}", f"        expr: {block(expr, 10)}"]
    lines += ["  - name: md5-alerts", "    rules:"]
    for name, severity, wait, expr, summary, description in alerts(s):
        lines += [
            f"      - alert: {name}",
            f"        expr: {block(expr, 10)}",
            f"        for: {s['MD5_ALERT_FOR'] or wait}",
            "        labels:",
            f"          severity: {severity}",
            "        annotations:",
            f"          summary: {quoted(summary)}",
            f"          description: {quoted(description)}",
            f"          runbook: {quoted('deploy/monitoring/RUNBOOK.md#' + name.lower())}",
        ]
    pad = " " * indent
    return "\n".join(pad + line if line else line for line in "\n".join(lines).splitlines()) + "\n"


HEADER = "# Generated by deploy/monitoring/render.py (edit it, not this file); thresholds: RUNBOOK.md.\n"


def rules_file(s):
    return HEADER + groups_yaml(s, 0)


def prometheus_rule(s):
    return (
        HEADER
        + "# The same rules as deploy/monitoring/rules.yml, for the Prometheus Operator.\n"
        + "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: md5-service\n"
        + "  namespace: md5\n  labels:\n    app.kubernetes.io/part-of: md5-service\nspec:\n"
        + groups_yaml(s, 2)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, help="write both files into this folder instead")
    parser.add_argument("--check", action="store_true", help="fail if the committed files differ from the defaults")
    args = parser.parse_args()
    if args.check:
        s = settings({})
        stale = [
            str(path)
            for path, text in [(HERE / "rules.yml", rules_file(s)), (HERE.parent / "k8s" / "prometheusrule.yaml", prometheus_rule(s))]
            if not path.exists() or path.read_text() != text
        ]
        if stale:
            sys.exit(f"stale (run python3 deploy/monitoring/render.py): {', '.join(stale)}")
        return
    s = settings(os.environ)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        targets = [args.out / "rules.yml", args.out / "prometheusrule.yaml"]
    else:
        targets = [HERE / "rules.yml", HERE.parent / "k8s" / "prometheusrule.yaml"]
    targets[0].write_text(rules_file(s))
    targets[1].write_text(prometheus_rule(s))


if __name__ == "__main__":
    main()
