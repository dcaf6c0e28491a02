"""Items folded in after training: this replica's rows for them, appended to one served model's index.

An added item is appended to the index (``ItemIndex.add``) as row ``n_items + j``. Each generation of the item
(recomputed after every post that names it) is appended again and its previous row is left *dead*: the index
only appends, so dead rows are excluded from every search until the next model replaces the index (the cap on
added items, and the nightly retrain, bound how many there are). Everything runs on the event loop, like the
searches, so a search never sees a half-appended row.
"""

from __future__ import annotations

import numpy as np

from model.tables import EmbeddingTable
from service.engine.index import ItemIndex


class AddedItems:
    """Rows of items the model was not trained with, by item id, and the dead rows of their older generations."""

    def __init__(self, index: ItemIndex, base: int) -> None:
        self._index, self.base = index, base
        self._ids: list[str] = []  # the item of row base + j (dead rows included)
        self._vectors: list[np.ndarray] = []
        self._rows: dict[str, int] = {}
        self._generations: dict[str, int] = {}
        self.dead = np.empty(0, np.int64)

    def __len__(self) -> int:
        """Items added (live), not rows."""
        return len(self._rows)

    def generation(self, item_id: str) -> int:
        """The generation of the row served for ``item_id`` (0: none)."""
        return self._generations.get(item_id, 0)

    def apply(self, item_id: str, generation: int, row: EmbeddingTable) -> bool:
        """Serve ``row`` for ``item_id`` if ``generation`` is newer than the one served; True if it was."""
        if generation <= self.generation(item_id):
            return False
        self._index.add(row)
        old = self._rows.get(item_id)
        if old is not None:
            self.dead = np.append(self.dead, old)
        self._rows[item_id], self._generations[item_id] = self.base + len(self._ids), generation
        self._ids.append(item_id)
        self._vectors.append(row.dequantize()[0])
        return True

    def row(self, item_id: str) -> int | None:
        return self._rows.get(item_id)

    def rows(self, item_ids: set[str] | frozenset[str] | list[str]) -> np.ndarray:
        """Live rows of those of ``item_ids`` that were added (others are skipped)."""
        return np.array([self._rows[i] for i in item_ids if i in self._rows], dtype=np.int64)

    def item_id(self, row: int) -> str:
        return self._ids[row - self.base]

    def vector(self, row: int) -> np.ndarray:
        return self._vectors[row - self.base]
