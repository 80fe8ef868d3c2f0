"""The transport floor: a bare nats-py responder (uvloop) doing the same crypto.

No framework, no auth, no validation, no database: decode the JSON body, base64,
crypto, base64, JSON reply — the least a responder must do to serve the same contract.
Its base64 is the worker's codec (pybase64), so that the floor is as fast as pqkms there.
Sign runs in a 2-thread pool (pyca's ML-DSA releases the GIL), like the worker's.

Run as ``python -m bench.responder NATS_URL KEM_SEED_HEX DSA_SEED_HEX``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import nats
import orjson
import uvloop
from nats.aio.msg import Msg

from bench.fixture import LocalKeys, Seeds
from schemas.fields import b64decode_canonical as _unb64
from schemas.fields import b64encode as _b64

__all__ = ["PING_SUBJECT", "QUEUE", "SUBJECT_PREFIX", "serve"]

SUBJECT_PREFIX = "bench.floor"
PING_SUBJECT = f"{SUBJECT_PREFIX}.ping"
QUEUE = "bench-floor"


def _reply(data: dict[str, object]) -> bytes:
    return orjson.dumps({"data": data})


async def serve(url: str, seeds: Seeds) -> None:
    """Answer ``bench.floor.{encrypt,decrypt,sign,verify}`` until SIGTERM."""
    keys = LocalKeys(seeds)
    pool = ThreadPoolExecutor(max_workers=2)
    loop = asyncio.get_running_loop()
    client = await nats.connect(url, pending_size=64 * 1024 * 1024)
    identity = f"{os.getpid()}".encode()
    running: set[asyncio.Task[None]] = set()

    async def on_encrypt(msg: Msg) -> None:
        body = orjson.loads(msg.data)
        sealed = keys.encrypt(_unb64(body["plaintext"]))
        await msg.respond(_reply({"ciphertext": _b64(sealed), "key_version": 1}))

    async def on_decrypt(msg: Msg) -> None:
        body = orjson.loads(msg.data)
        opened = keys.decrypt(_unb64(body["ciphertext"]))
        await msg.respond(_reply({"plaintext": _b64(opened), "key_version": 1}))

    async def sign_and_reply(msg: Msg) -> None:
        body = orjson.loads(msg.data)
        message = _unb64(body["message"])
        signed = await loop.run_in_executor(pool, keys.sign, message)
        await msg.respond(_reply({"signature": _b64(signed), "key_version": 1}))

    async def on_sign(msg: Msg) -> None:
        # nats-py runs one callback at a time per subscription: hand off so that
        # several signatures run in the pool at once.
        task = loop.create_task(sign_and_reply(msg))
        running.add(task)
        task.add_done_callback(running.discard)

    async def on_verify(msg: Msg) -> None:
        body = orjson.loads(msg.data)
        valid = keys.verify(_unb64(body["signature"]),
                            _unb64(body["message"]))
        await msg.respond(_reply({"valid": valid, "key_version": 1}))

    async def on_ping(msg: Msg) -> None:
        await msg.respond(identity)

    for name, callback in (("encrypt", on_encrypt), ("decrypt", on_decrypt),
                           ("sign", on_sign), ("verify", on_verify)):
        await client.subscribe(f"{SUBJECT_PREFIX}.{name}", queue=QUEUE, cb=callback,
                               pending_msgs_limit=1_000_000)
    await client.subscribe(PING_SUBJECT, queue=QUEUE, cb=on_ping)
    await client.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await client.drain()
    pool.shutdown(wait=False)


def main(argv: list[str]) -> None:
    url, kem_hex, dsa_hex = argv
    uvloop.run(serve(url, Seeds(bytes.fromhex(kem_hex), bytes.fromhex(dsa_hex))))


if __name__ == "__main__":
    main(sys.argv[1:])
