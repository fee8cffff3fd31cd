"""Text queries that arrive together are embedded as one batch: under load each query waits for at most one batch
ahead of it, and the batch costs little more than one query."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from . import schema


class TextBatcher:
    """Text queries that arrive while the model is busy are embedded and searched together, in one batch (up
    to `max_batch`): under load each query waits for at most one batch ahead of it, and the batch costs little
    more than one query."""

    def __init__(self, index, max_batch: int = 32):  # a SearchIndex
        import queue

        self.index, self.max_batch = index, max_batch
        self.queue: "queue.Queue" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="dualtower-text-batcher", daemon=True)
        self.thread.start()

    def submit(self, text: str, k: int, page: schema.Page = schema.Page()) -> Future:
        """The hits of `text`: k of them after page.offset, at least page.min_score."""
        future: Future = Future()
        self.queue.put((text, (k, page), future))
        return future

    def _run(self) -> None:
        import queue

        while True:
            batch = [self.queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                vectors = self.index.embed_texts([t for t, _, _ in batch])  # one batch through the model
            except Exception as e:  # every waiting request hears of it
                for _, _, future in batch:
                    future.set_exception(e)
                continue
            # the requests of one filter share one ranking, deep enough for each, cut to each one's page
            groups: dict = {}
            for i, (_, (_, page), _) in enumerate(batch):
                groups.setdefault(page.where, []).append(i)
            for where, members in groups.items():
                try:
                    deepest = max(batch[i][1][0] + batch[i][1][1].offset for i in members)
                    hits = self.index.search_vectors(vectors[members], deepest, where=where)
                    for i, h in zip(members, hits):
                        k, page = batch[i][1]
                        low = -float("inf") if page.min_score is None else page.min_score
                        batch[i][2].set_result([hit for hit in h[page.offset: page.offset + k] if hit.score >= low])
                except Exception as e:  # one filter's error is its requests' alone
                    for i in members:
                        if not batch[i][2].done():
                            batch[i][2].set_exception(e)
