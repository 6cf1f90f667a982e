"""The peer for `ferry bench mllp`: python-hl7's asyncio MLLP server, answering AA and storing nothing.

Measured in the same run as Ferry so BENCHMARKS.md compares like with like. Prints
`peer: mllp listening on HOST:PORT` once bound (port 0 picks a free one).

    python3 -m venv .venv && .venv/bin/pip install hl7
    .venv/bin/python benches/peers/python_hl7_server.py 127.0.0.1 0
"""

import asyncio
import sys

import hl7
from hl7.mllp import start_hl7_server


async def process_hl7_messages(hl7_reader, hl7_writer):
    try:
        while not hl7_writer.is_closing():
            message = await hl7_reader.readmessage()
            hl7_writer.writemessage(message.create_ack())
            await hl7_writer.drain()
    except asyncio.IncompleteReadError:
        pass
    finally:
        hl7_writer.close()


async def main(host, port):
    server = await start_hl7_server(process_hl7_messages, host=host, port=port)
    addr = server.sockets[0].getsockname()
    print(f"peer: mllp listening on {addr[0]}:{addr[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1",
                     int(sys.argv[2]) if len(sys.argv) > 2 else 0))
