// Graphile Worker's side of bench/peer_bench.py: one worker process running no-op jobs.
//
//   node graphile_drain.cjs install            create Graphile Worker's schema
//   node graphile_drain.cjs work <concurrency> <local queue size> <complete batch delay ms> <sync>
//
// `work` prints "ready" once its pool listens, runs jobs until SIGTERM, then prints how many it
// ran and the CPU seconds it spent since it was ready. The peer bench queues the jobs in one transaction after every process is ready, so a
// process's start-up is not counted against Graphile Worker. <sync> "off" opens the pool's
// sessions with synchronous_commit off (what the router's own session does).
// Found through NODE_PATH (the bench installs graphile-worker under build/peer-bench).
"use strict";

const { Pool } = require("pg");
const { run, runMigrations } = require("graphile-worker");

const connectionString = process.env.DATABASE_URL;

async function install() {
  await runMigrations({ connectionString, logger: quietLogger() });
}

function quietLogger() {
  const { Logger } = require("graphile-worker");
  return new Logger(() => (level, message) => {
    if (level === "error") console.error(message);
  });
}

async function work(concurrency, localQueueSize, completeDelay, sync) {
  const pgPool = new Pool({
    connectionString,
    max: concurrency + 2,
    options: sync === "off" ? "-c synchronous_commit=off" : undefined,
  });
  // Graphile Worker warns about a pool whose idle and newly connected clients have no error
  // handler; an error is printed rather than crashing the process.
  pgPool.on("error", (error) => console.error(error.message));
  pgPool.on("connect", (client) => client.on("error", (error) => console.error(error.message)));
  let ran = 0;
  const runner = await run({
    pgPool,
    concurrency,
    noHandleSignals: true,
    pollInterval: 1000,
    logger: quietLogger(),
    taskList: { noop: async () => {} },
    preset: {
      worker: {
        localQueue: localQueueSize > 1 ? { size: localQueueSize } : undefined,
        completeJobBatchDelay: completeDelay,
      },
    },
  });
  runner.events.on("job:success", () => {
    ran += 1;
  });
  let cpuAtReady;
  process.on("SIGTERM", async () => {
    const cpu = process.cpuUsage(cpuAtReady);
    await runner.stop();
    await pgPool.end();
    console.log(`ran ${ran} cpu ${(cpu.user + cpu.system) / 1e6}`);
    process.exit(0);
  });
  cpuAtReady = process.cpuUsage();
  console.log("ready");
}

const [mode, ...rest] = process.argv.slice(2);
const done = mode === "install" ? install() : work(...rest.slice(0, 3).map(Number), rest[3]);
done.catch((error) => {
  console.error(error);
  process.exit(1);
});
