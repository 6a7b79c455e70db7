"""What an answer's bytes go through on their way out, in ClickHouse's order
(HTTPHandler::processQuery): the Native layout of the client's protocol revision
(sql_native), then ClickHouse's compressed blocks for `compress=1` (sql_blocks), then HTTP
compression for `enable_http_compression=1` (sql_compression). Both compressions may apply at
once, blocks inside the Content-Encoding, as in ClickHouse.

An exception written into a stream goes through the compressions but not the Native layout
(it is text). An error before the first byte is plain text, uncompressed, as ClickHouse's.
"""

from __future__ import annotations

from steplog.server.sql_blocks import BlockWriter
from steplog.server.sql_compression import Encoder
from steplog.server.sql_native import NativeLayout

__all__ = ["ResponseBody"]


class ResponseBody:
    """One response's output chain. Blocking and CPU-bound: call from a worker thread for
    large chunks."""

    def __init__(self, layout: NativeLayout | None, blocks: BlockWriter | None,
                 encoder: Encoder | None) -> None:
        self._layout = layout
        self._blocks = blocks
        self._encoder = encoder

    @property
    def content_encoding(self) -> str | None:
        return self._encoder.content_encoding if self._encoder else None

    def data(self, chunk: bytes) -> bytes:
        """Result bytes (whole Native blocks for a Native answer) as they are sent."""
        if self._layout is not None:
            chunk = self._layout.rewrite(chunk)
        return self.exception(chunk)

    def exception(self, chunk: bytes) -> bytes:
        """Bytes that are not result rows (an exception block): compressed only."""
        if not chunk:
            return b""
        if self._blocks is not None:
            chunk = self._blocks.write(chunk)
        return self._encoder.compress(chunk) if self._encoder else chunk

    def end(self) -> bytes:
        """The last bytes (the end of the Content-Encoding's stream); once, last."""
        return self._encoder.flush() if self._encoder else b""
