# The original design's Python inbound lane (ORIGINAL_DESIGN.md, section 5), as written there
# but for the broker's address and the exchange, which come from the environment: FastAPI, and
# a pika publish per webhook, transient and unconfirmed. A baseline for the benchmark.
#
#   ESS_AMQP_HOST=127.0.0.1 ESS_AMQP_PORT=5672 ESS_EXCHANGE=events \
#     python3 -m uvicorn inbound:app --app-dir bench/baseline --host 127.0.0.1 --port 8080
import json
import os

import pika
from fastapi import FastAPI, Request

app = FastAPI()
EXCHANGE = os.environ["ESS_EXCHANGE"]
BUS = pika.BlockingConnection(
    pika.ConnectionParameters(host=os.environ["ESS_AMQP_HOST"],
                              port=int(os.environ["ESS_AMQP_PORT"]))).channel()
BUS.exchange_declare(exchange=EXCHANGE, exchange_type="fanout", durable=True)


@app.post("/webhook/{partner}")
async def prison_cb(partner: str, req: Request):
    data = await req.json()
    ev = {"type": "SlotConfirmed", "id": data["id"], "status": data["status"]}
    BUS.basic_publish(exchange=EXCHANGE, routing_key="", body=json.dumps(ev))
    return {"ok": True}
