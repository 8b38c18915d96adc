# The original design's Python outbound lane (ORIGINAL_DESIGN.md, section 4), as written there
# but for the broker's address, the queue and the partner's URL, which come from the command
# line: pika with auto-ack (a message is gone once delivered, pushed or not), one requests.post
# per event without a session (a new connection each time). A baseline for the benchmark.
# QUEUE_TYPE (classic, the default, or quorum) is the type the benchmark declared the queue
# with, which a declare must repeat.
#
#   python3 outbound.py AMQP_HOST AMQP_PORT QUEUE PARTNER_URL [QUEUE_TYPE]
import json
import signal
import sys

import pika
import requests

host, port, queue, partner_url = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
quorum = len(sys.argv) > 5 and sys.argv[5] == "quorum"
BUS = pika.BlockingConnection(pika.ConnectionParameters(host=host, port=port)).channel()
BUS.queue_declare(queue=queue, durable=True, arguments={"x-queue-type": "quorum"} if quorum else None)


def send_to_prison(ev):
    payload = {"id": ev["id"], "inmate": ev["inmateId"], "slot": ev["slotUtc"]}
    requests.post(partner_url, json=payload, timeout=3)


def on_msg(_ch, _method, _props, body):
    send_to_prison(json.loads(body))


BUS.basic_consume(queue=queue, on_message_callback=on_msg, auto_ack=True)
# Stopped by SIGTERM (the benchmark): exit 0, as the other lanes do.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("Outbound lane running", flush=True)
try:
    BUS.start_consuming()
except KeyboardInterrupt:
    pass
