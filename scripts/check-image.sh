#!/usr/bin/env bash
# Proves that the container image builds, without a Docker engine (none runs on these machines):
#
# 1. assembles the build context as Docker does: the working tree filtered by .dockerignore
#    (last matching line wins, `!` re-includes, a line matching a folder covers what is in it);
# 2. runs the Dockerfile's build stage in a scratch folder: WORKDIR, COPY from that context and
#    RUN, with the stage's absolute paths (/src, /out) moved under the scratch folder. The
#    apt-get line is not run: its packages are checked as installed instead (this machine is
#    the builder image's Debian with the same Swift);
# 3. checks what the runtime stage takes and runs: every `COPY --from=build` source was made,
#    the binary links no Swift library (the runtime stage has none), `--version` answers, with
#    the image's ENV and no programs file mounted `run` exits 78 saying to mount one, and a
#    fatal signal prints a backtrace through the backtracer the image carries.
#
# A fresh release build from an empty .build, as `docker build` does: minutes on 2 cores.
#   scripts/check-image.sh            (scripts/test.sh runs it; REFERRALD_SKIP_IMAGE=1 skips it there)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/referrald-image.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
exec python3 - "$ROOT" "$WORK" <<'PY'
import fnmatch, os, re, shlex, shutil, signal, subprocess, sys, time

root, work = sys.argv[1], sys.argv[2]
context, fs = os.path.join(work, "context"), os.path.join(work, "rootfs")
started = time.monotonic()

def say(message):
    print(f"image: {message} ({time.monotonic() - started:.0f}s)", flush=True)

def fail(message):
    print(f"image: FAILED: {message}", flush=True)
    sys.exit(1)

# ---- 1. the build context ---------------------------------------------------------------------
patterns = []
for line in open(os.path.join(root, ".dockerignore")):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    negate = line.startswith("!")
    pattern = os.path.normpath(line.lstrip("!").strip("/"))
    patterns.append((negate, pattern))

def matches(pattern, path):
    """Docker's rule: the pattern matches the path or one of its parent folders; `*` and `?`
    stay within one path segment, `**` spans any number."""
    parts = path.split("/")
    regex = "^" + "/".join(".*" if seg == "**" else fnmatch.translate(seg)[4:-3].replace(".*", "[^/]*")
                            for seg in pattern.split("/")) + "$"
    return any(re.match(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1))

def excluded(path):
    verdict = False
    for negate, pattern in patterns:
        if matches(pattern, path):
            verdict = not negate
    return verdict

count = 0
for directory, folders, files in os.walk(root):
    rel_dir = os.path.relpath(directory, root)
    rel_dir = "" if rel_dir == "." else rel_dir + "/"
    # A folder is only skipped whole when no `!` line could bring back something inside it.
    folders[:] = [f for f in folders
                  if not (excluded(rel_dir + f) and not any(n and p.startswith(rel_dir + f + "/") for n, p in patterns))]
    for f in files:
        rel = rel_dir + f
        if not excluded(rel):
            os.makedirs(os.path.join(context, rel_dir), exist_ok=True)
            shutil.copy2(os.path.join(root, rel), os.path.join(context, rel), follow_symlinks=False)
            count += 1
say(f"build context: {count} files ({', '.join(sorted(os.listdir(context)))})")

# ---- the Dockerfile, as instructions per stage --------------------------------------------------
instructions, pending = [], ""
for line in open(os.path.join(root, "Dockerfile")):
    stripped = line.strip()
    if stripped.startswith("#") or (not stripped and not pending):
        continue
    if stripped.endswith("\\"):
        pending += stripped[:-1] + " "
        continue
    full = (pending + stripped).strip()
    pending = ""
    if full:
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
stages, current = {}, None
for keyword, rest in instructions:
    if keyword == "FROM":
        words = rest.split()
        current = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage{len(stages)}"
        stages[current] = []
    elif current is not None:
        stages[current].append((keyword, rest))
if "build" not in stages or len(stages) != 2:
    fail(f"expected a build stage named `build` and a runtime stage, found {list(stages)}")
runtime = [s for s in stages if s != "build"][0]

def copy_args(rest):
    words = shlex.split(rest)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1], paths[-1]

# Absolute paths the build stage writes: its WORKDIRs and what the runtime stage copies out of it.
prefixes = {rest for keyword, rest in stages["build"] if keyword == "WORKDIR"}
for keyword, rest in stages[runtime]:
    if keyword == "COPY":
        flags, sources, _ = copy_args(rest)
        if "--from=build" in flags:
            prefixes |= {"/" + s.strip("/").split("/")[0] for s in sources}
mapped_prefix = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True)) + r")(?=[/\s\"']|$)")
def in_fs(text):
    return mapped_prefix.sub(lambda m: fs + m.group(1), text)

# ---- 2. the build stage --------------------------------------------------------------------------
cwd = fs
for keyword, rest in stages["build"]:
    if keyword == "WORKDIR":
        cwd = fs + rest
        os.makedirs(cwd, exist_ok=True)
    elif keyword == "COPY":
        flags, sources, dest = copy_args(rest)
        if flags:
            fail(f"COPY {rest}: flags in the build stage are not emulated")
        target = os.path.join(cwd, dest) if not dest.startswith("/") else fs + dest
        for source in sources:
            found = [p for p in os.listdir(context) if fnmatch.fnmatch(p, source.rstrip("/"))] if "[" in source or "*" in source \
                else ([source.rstrip("/")] if os.path.exists(os.path.join(context, source)) else [])
            if not found and not ("[" in source or "*" in source):
                fail(f"COPY {source}: not in the build context (.dockerignore leaves it out?)")
            for name in found:
                src = os.path.join(context, name)
                if os.path.isdir(src):
                    shutil.copytree(src, target if not dest.endswith("/") else os.path.join(target, name), dirs_exist_ok=True)
                else:
                    os.makedirs(target if dest.endswith("/") else os.path.dirname(target), exist_ok=True)
                    shutil.copy2(src, os.path.join(target, name) if dest.endswith("/") else target)
    elif keyword == "RUN":
        if rest.startswith("apt-get"):
            install = rest.split("apt-get install", 1)[1].split("&&", 1)[0].split()
            packages = [w for w in install if not w.startswith("-")]
            missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
            if missing:
                fail(f"the build stage installs {' '.join(missing)}, missing here: apt-get install {' '.join(missing)}")
            say(f"RUN apt-get ...: {' '.join(packages)} installed here")
            continue
        say(f"RUN {rest[:100]}{'...' if len(rest) > 100 else ''}")
        # Docker's shell form: /bin/sh -c, in the WORKDIR.
        if subprocess.run(["/bin/sh", "-c", in_fs(rest)], cwd=cwd).returncode != 0:
            fail(f"RUN {rest}")
    else:
        fail(f"{keyword} in the build stage is not emulated by scripts/check-image.sh")
say("build stage done")

# ---- 3. what the runtime stage takes, and the binary in it ---------------------------------------
image_env, installed = {}, {}
for keyword, rest in stages[runtime]:
    if keyword == "COPY":
        flags, sources, dest = copy_args(rest)
        for source in sources:
            where = fs + source if "--from=build" in flags else os.path.join(context, source)
            if not os.path.exists(where):
                fail(f"runtime stage: COPY {' '.join(flags)} {source}: the {'build stage made no such file' if '--from=build' in flags else 'build context has no such file'}")
            installed[dest] = where
    elif keyword == "ENV":
        for word in shlex.split(rest):
            key, _, value = word.partition("=")
            image_env[key] = value
binary = installed.get("/usr/local/bin/referrald") or fail("the runtime stage installs no /usr/local/bin/referrald")

ldd = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
if "not found" in ldd or "libswift" in ldd or "libFoundation" in ldd:
    fail(f"the binary needs libraries the runtime stage lacks:\n{ldd}")
version = subprocess.run([binary, "--version"], capture_output=True, text=True)
if version.returncode != 0:
    fail(f"--version exited {version.returncode}: {version.stderr}")
say(f"referrald --version: {version.stdout.strip()}; links only {', '.join(sorted({l.split()[0] for l in ldd.splitlines() if '=>' in l}))}")

# The image's environment, with its paths where this check put the files, and services that
# are never reached (port 1).
env = {k: v for k, v in os.environ.items() if not k.startswith(("REFERRALD_", "SWIFT_BACKTRACE", "CREDENTIALS_DIRECTORY"))}
env.update(image_env)
env.update({"REFERRALD_AMQP_URL": "amqp://u:p@127.0.0.1:1/x", "REFERRALD_DATABASE_URL": "postgres://u:p@127.0.0.1:1/x",
            "REFERRALD_HTTP_PORT": "0"})
programs = image_env.get("REFERRALD_PROGRAMS_FILE") or fail("the image sets no REFERRALD_PROGRAMS_FILE")
if programs in installed:
    fail(f"the image bakes in a programs file at {programs}: it must be mounted")
env["REFERRALD_PROGRAMS_FILE"] = fs + programs   # not on this machine's /etc either
unmounted = subprocess.run([binary, "run"], env=env, capture_output=True, text=True, timeout=60)
if unmounted.returncode != 78 or "mount" not in unmounted.stderr:
    fail(f"run without a programs file: exit {unmounted.returncode}, want 78 and a message to mount one: {unmounted.stderr}")
say(f"run without a programs file: exit 78: {unmounted.stderr.strip()[:160]}")

backtrace = dict(item.partition("=")[::2] for item in image_env.get("SWIFT_BACKTRACE", "").split(",") if item)
backtracer = installed.get(backtrace.get("swift-backtrace", "")) or fail("SWIFT_BACKTRACE names no backtracer the image installs")
env["SWIFT_BACKTRACE"] = image_env["SWIFT_BACKTRACE"].replace(backtrace["swift-backtrace"], backtracer)
env["REFERRALD_PROGRAMS_FILE"] = os.path.join(root, "deploy/programs.example.yaml")
# `run` retries the unreachable database until signalled; SIGSEGV stands in for a crash. Sent
# with kill(2) rather than raised by a fault, the signal leaves the process running once the
# handler has printed (no faulting instruction runs again), so it is killed after the backtrace.
crash_log = os.path.join(work, "crash.stderr")
with open(crash_log, "w") as stderr:
    crashing = subprocess.Popen([binary, "run"], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
time.sleep(2)
crashing.send_signal(signal.SIGSEGV)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and "Backtrace took" not in open(crash_log).read():
    time.sleep(0.5)
crashing.kill()
crashing.wait()
err = open(crash_log).read()
if "Backtrace took" not in err or " crashed:" not in err:
    fail(f"no backtrace on stderr within 60 s of SIGSEGV:\n{err[-2000:]}")
crashed = re.search(r"^Thread \d+ .* crashed:$", err, re.M)
say(f"SIGSEGV: backtrace on stderr ({crashed.group(0) if crashed else 'crashed'}), through {backtrace['swift-backtrace']}")
say("the image builds")
PY
