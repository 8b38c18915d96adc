// The "straightforward Node.js" inbound lane, as a baseline for the benchmark: an HTTP
// server that turns each webhook into an internal event, publishes it persistent on a confirm
// channel to the events exchange, and answers 200 once the broker confirms it (503 if it
// nacks). No signature check, no idempotency claim, no replay record: it does less per webhook
// than inbound_svc.
//
//   node inbound.js AMQP_URL EXCHANGE PORT
'use strict';
const http = require('http');
const amqp = require('amqplib');

async function main() {
  const [amqpUrl, exchange, port] = process.argv.slice(2);
  if (!amqpUrl || !exchange || !port) {
    console.error('usage: node inbound.js AMQP_URL EXCHANGE PORT');
    process.exit(2);
  }
  const conn = await amqp.connect(amqpUrl);
  const ch = await conn.createConfirmChannel();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let ev;
      try {
        ev = JSON.parse(Buffer.concat(chunks).toString());
      } catch (err) {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: `body: ${err.message}` }));
        return;
      }
      const event = JSON.stringify({ type: 'SlotConfirmed', id: ev.id, status: ev.status });
      ch.publish(exchange, '', Buffer.from(event),
                 { persistent: true, contentType: 'application/json', messageId: String(ev.id),
                   type: 'SlotConfirmed' },
                 (err) => {
                   res.writeHead(err ? 503 : 200, { 'content-type': 'application/json' });
                   res.end(err ? '{"error":"not confirmed"}' : '{"ok":true}');
                 });
    });
  });
  server.keepAliveTimeout = 60000;
  server.listen(Number(port), '127.0.0.1', () => console.log(`inbound: listening on ${port}`));
  const stop = async () => {
    server.close();
    try { await ch.close(); await conn.close(); } finally { process.exit(0); }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => { console.error(`inbound: ${err.stack || err}`); process.exit(1); });
