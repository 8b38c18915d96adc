// The "straightforward Node.js" outbound lane, as a baseline for the benchmark: consume
// with manual ack (prefetch), map the event, POST it to the partner through an undici keep-alive
// pool, ack after the partner's 2xx (nack and requeue otherwise). No replay record, no retry
// schedule, no parking: it does less per event than outbound_svc.
//
//   node outbound.js AMQP_URL QUEUE PARTNER_URL [PREFETCH] [CONNECTIONS]
'use strict';
const amqp = require('amqplib');
const { Pool } = require('undici');

async function main() {
  const [amqpUrl, queue, partnerUrl, prefetch = '1024', connections = '64'] =
    process.argv.slice(2);
  if (!amqpUrl || !queue || !partnerUrl) {
    console.error('usage: node outbound.js AMQP_URL QUEUE PARTNER_URL [PREFETCH] [CONNECTIONS]');
    process.exit(2);
  }
  const url = new URL(partnerUrl);
  const pool = new Pool(url.origin, { connections: Number(connections), pipelining: 1 });
  const conn = await amqp.connect(amqpUrl);
  const ch = await conn.createChannel();
  await ch.prefetch(Number(prefetch));
  let inFlight = 0;
  const { consumerTag } = await ch.consume(queue, async (msg) => {
    if (msg === null) return;  // consumer cancelled by the broker
    inFlight++;
    try {
      const ev = JSON.parse(msg.content.toString());
      const body = JSON.stringify({ id: ev.id, inmate: ev.inmateId, slot: ev.slotUtc,
                                    sentNs: ev.sentNs });
      const res = await pool.request({ path: url.pathname, method: 'POST', body,
                                       headers: { 'content-type': 'application/json' } });
      await res.body.dump();
      if (res.statusCode >= 200 && res.statusCode < 300) {
        ch.ack(msg);
      } else {
        ch.nack(msg, false, true);
      }
    } catch (err) {
      console.error(`outbound: ${err.message}`);
      try { ch.nack(msg, false, true); } catch (e) { /* the channel is closing */ }
    } finally {
      inFlight--;
    }
  }, { noAck: false });
  // Stop taking deliveries, let those in flight finish and be acked (at most 10 s), then close:
  // a stop right after the partner saw the last request must not return it to the queue.
  const stop = async () => {
    try {
      await ch.cancel(consumerTag);
      for (let waited = 0; inFlight > 0 && waited < 10000; waited += 10) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      await ch.close(); await conn.close(); await pool.close();
    } finally { process.exit(0); }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => { console.error(`outbound: ${err.stack || err}`); process.exit(1); });
