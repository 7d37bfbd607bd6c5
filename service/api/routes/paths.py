"""The `anypath` path convertor that collection and item routes use, registered on import.

Item ids may hold '/', and a name or id with a line break must reach the
route to be refused with a 400 that says why, rather than a bare 404.
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class AnyPathConvertor(Convertor[str]):
    """Like starlette's "path", but a line break matches too (to be refused with a 400), and
    it is never empty (so "/collections/" still redirects to "/collections")."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", AnyPathConvertor())
