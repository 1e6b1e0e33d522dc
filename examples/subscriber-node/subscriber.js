#!/usr/bin/env node
// Funnelcast example subscriber on KafkaJS (pure JavaScript, no librdkafka).
// Reads a topic from the beginning and prints each message as one JSON line:
//   {"topic", "partition", "offset", "key", "headers": {name: string}, "value": "<the raw CloudEvent JSON>"}
// It exits 0 after --count messages or when --timeout seconds have passed, and 1 when it could not
// join the topic (broker unreachable, unknown topic) before the timeout.
'use strict';
const { Kafka, logLevel } = require('kafkajs');

const OPTIONS = ['--bootstrap', '--topic', '--group', '--count', '--timeout'];

function usage(message) {
  if (message) process.stderr.write(`subscriber: ${message}\n`);
  process.stderr.write(
    'usage: node subscriber.js [--bootstrap HOST:PORT[,HOST:PORT]] [--topic TOPIC] [--group ID]\n' +
      '                          [--count N] [--timeout SECONDS]\n' +
      '  --bootstrap  default $FUNNELCAST_KAFKA_BOOTSTRAP, else 127.0.0.1:9092 (the embedded broker)\n' +
      '  --topic      default sales.leads\n' +
      '  --group      consumer group; default a fresh one, so the whole topic is read\n' +
      '  --count      exit after this many messages; default 0 = no limit\n' +
      '  --timeout    exit after this many seconds; default 0 = run until interrupted\n',
  );
  process.exit(message ? 2 : 0);
}

function parseArgs(argv) {
  const opts = {
    bootstrap: process.env.FUNNELCAST_KAFKA_BOOTSTRAP || '127.0.0.1:9092',
    topic: 'sales.leads',
    group: `funnelcast-example-${process.pid}-${Date.now()}`,
    count: '0',
    timeout: '0',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i];
    if (name === '-h' || name === '--help') usage();
    if (!OPTIONS.includes(name)) usage(`unknown argument ${name}`);
    if (argv[i + 1] === undefined) usage(`${name} needs a value`);
    opts[name.slice(2)] = argv[i + 1];
  }
  opts.count = Number(opts.count);
  opts.timeout = Number(opts.timeout);
  if (!Number.isInteger(opts.count) || opts.count < 0) usage('--count must be a whole number');
  if (!Number.isFinite(opts.timeout) || opts.timeout < 0) usage('--timeout must be a number of seconds');
  return opts;
}

const text = (buffer) => (buffer === null || buffer === undefined ? null : buffer.toString('utf8'));

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const kafka = new Kafka({
    clientId: 'funnelcast-example-subscriber',
    brokers: opts.bootstrap.split(','),
    logLevel: logLevel.ERROR,
  });
  // A 6 s session (the minimum Apache Kafka accepts by default) keeps the group join short:
  // Tansu, the embedded broker, holds a new member's JoinGroup for half the session timeout.
  const consumer = kafka.consumer({ groupId: opts.group, sessionTimeout: 6000, heartbeatInterval: 1000 });
  let joined = false;
  let seen = 0;
  let stopping = null;
  let timer = null;
  const stop = (code, why) => {
    if (stopping === null) {
      if (timer) clearTimeout(timer);
      if (why) process.stderr.write(`subscriber: ${why}\n`);
      stopping = consumer
        .disconnect()
        .catch((err) => process.stderr.write(`subscriber: disconnect failed: ${err.message}\n`))
        .then(() => process.exit(code));
    }
    return stopping;
  };
  process.on('SIGINT', () => stop(0));
  process.on('SIGTERM', () => stop(0));
  if (opts.timeout > 0) {
    timer = setTimeout(
      () => (joined ? stop(0) : stop(1, `did not join ${opts.topic} on ${opts.bootstrap} within ${opts.timeout} s`)),
      opts.timeout * 1000,
    );
  }
  consumer.on(consumer.events.GROUP_JOIN, () => {
    joined = true;
  });

  await consumer.connect();
  await consumer.subscribe({ topics: [opts.topic], fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ topic, partition, message }) => {
      if (stopping !== null) return;
      const headers = {};
      for (const [name, value] of Object.entries(message.headers || {})) {
        headers[name] = Array.isArray(value) ? value.map(text) : text(value);
      }
      const line = { topic, partition, offset: message.offset, key: text(message.key), headers, value: text(message.value) };
      process.stdout.write(`${JSON.stringify(line)}\n`);
      seen += 1;
      if (opts.count > 0 && seen >= opts.count) stop(0);
    },
  });
}

main().catch((err) => {
  process.stderr.write(`subscriber: ${err.stack || err}\n`);
  process.exit(1);
});
