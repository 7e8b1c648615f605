from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow


class GalleryChange(Base):
    """The change feed: every template added to or removed from the gallery, in order.

    Other server processes replay it to keep their in-memory index in step (PostgreSQL also
    sends a NOTIFY so they need not wait for their next poll).
    """

    __tablename__ = "gallery_changes"

    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    pack: Mapped[str] = mapped_column(String(80))
    shopper_id: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(16))  # add_shopper, remove_shopper
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
