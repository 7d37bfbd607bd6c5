"""Request and response models of /collections and /search.

Bodies are validated with pydantic (422 on a mismatch, see `service.api.error_handlers`);
what needs a setting (CPC_MAX_BATCH, CPC_MAX_K, CPC_MAX_VECTOR_DIM) or the
collection (a vector's dim, an id's characters) is checked by the routes.
Vectors hold JSON numbers only: strings and booleans are refused, not coerced.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from service.inference.pooling import VECTOR_POOLINGS, VectorPooling

IndexKind = Literal["flat", "ivf"]
Number = Annotated[float, Field(strict=True)]


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true or false")
    return value


WholeNumber = Annotated[int, BeforeValidator(_not_a_boolean)]


class _OneOfInputOrVector(BaseModel):
    """Something given either as an `input` to embed or as a ready `vector`."""

    input: str | None = Field(
        default=None,
        description="as in /embed: text, or the file's bytes in base64, or a data URI",
    )
    vector: list[Number] | None = Field(
        default=None, description="a vector of the collection's dim (normalised on the way in)"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> _OneOfInputOrVector:
        if (self.input is None) == (self.vector is None):
            raise ValueError("give exactly one of `input` and `vector`")
        return self


class UpsertItem(_OneOfInputOrVector):
    """One item to insert or replace."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="1 to 256 characters, no control characters")
    metadata: dict[str, Any] | None = Field(
        default=None, description="a JSON object (at most CPC_MAX_METADATA_BYTES as JSON)"
    )


class UpsertRequest(BaseModel):
    """The JSON body of POST /collections/{name}/items."""

    model_config = ConfigDict(extra="forbid")

    items: list[UpsertItem] = Field(min_length=1, description="at most CPC_MAX_BATCH items")
    keep_originals: bool | None = Field(
        default=None,
        description="keep a small original of each `input` item (image thumbnail, start of a "
        "clip, the text) for GET /collections/{name}/originals/{id}; default: yes, unless "
        "CPC_MAX_ORIGINAL_BYTES is 0",
    )


class UpsertResponse(BaseModel):
    upserted: int
    ids: list[str]


class CreateCollectionRequest(BaseModel):
    """The body of PUT /collections/{name}."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="the loaded model whose vectors the collection holds")
    index: IndexKind = Field(
        default="flat", description="flat (exact) or ivf (approximate, supports deletion)"
    )
    pooling: VectorPooling = Field(
        default="mean",
        description="how inputs embedded for the collection pool their steps, as in /embed: "
        "mean, last, or stats (mean ⊕ standard deviation over valid steps, dimension 2·D); "
        "the collection's dim follows from it",
    )

    @field_validator("pooling", mode="before")
    @classmethod
    def _one_vector_per_item(cls, value: Any) -> Any:
        if value == "none":
            raise ValueError(
                "a collection holds one vector per item, so its pooling is one of "
                f"{', '.join(VECTOR_POOLINGS)}, not none"
            )
        return value


class CollectionDescription(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    model: str
    dim: int = Field(description="values per vector: the model's width D, 2·D if pooling stats")
    pooling: VectorPooling
    count: int
    index: str


class UnavailableCollection(BaseModel):
    name: str
    detail: str = Field(description="why it is out of service (its files are damaged)")


class CollectionList(BaseModel):
    collections: list[CollectionDescription]
    unavailable: list[UnavailableCollection] = Field(
        default_factory=list,
        description="collections kept out of service: their routes answer 503 with this detail",
    )


class ItemResponse(BaseModel):
    id: str
    metadata: dict[str, Any]
    vector: list[float]


FILTER_HELP = (
    "metadata conditions, all of which must hold: a plain value is equality, an object of "
    "operators (eq, ne, gt, gte, lt, lte, in, nin) tests a key, and `and`/`or` (lists) and "
    "`not` (an object) combine conditions"
)


class SearchOptions(BaseModel):
    """What every search names: where to look, how many results, which metadata."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(description="the collection to search")
    k: WholeNumber = Field(default=10, description="most results, 1 to CPC_MAX_K")
    filter: dict[str, Any] | None = Field(default=None, description=FILTER_HELP)
    with_original: bool = Field(
        default=False,
        description="add to each result `original`: the media type of the original it keeps "
        "(GET /collections/{name}/originals/{id}), or null",
    )


class SearchQuery(_OneOfInputOrVector):
    """One of several queries in a POST /search: what to look for and its own filter."""

    model_config = ConfigDict(extra="forbid")

    filter: dict[str, Any] | None = Field(
        default=None, description="as the search's `filter`, for this query (default: that one)"
    )


class SearchRequest(SearchOptions):
    """The JSON body of POST /search: exactly one of `input`, `vector` and `queries`."""

    input: str | None = Field(
        default=None,
        description="as in /embed: text, or the file's bytes in base64, or a data URI",
    )
    vector: list[Number] | None = Field(
        default=None, description="a vector of the collection's dim (normalised on the way in)"
    )
    queries: list[SearchQuery] | None = Field(
        default=None,
        description="several queries in one call (at most CPC_MAX_QUERIES); `results` is then "
        "one list per query, in order",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchRequest:
        given = [v for v in (self.input, self.vector, self.queries) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `input`, `vector` and `queries`")
        return self


class SearchResult(BaseModel):
    id: str
    score: float = Field(description="cosine similarity")
    metadata: dict[str, Any]
    original: str | None = Field(
        default=None, description="with `with_original`: the original's media type, or null"
    )


class SearchResponse(BaseModel):
    collection: str
    results: list[SearchResult] | list[list[SearchResult]] = Field(
        description="best first; with `queries`, one such list per query"
    )


class PageItem(BaseModel):
    id: str
    metadata: dict[str, Any]


class ItemPage(BaseModel):
    """GET /collections/{name}/items: one page of items in id order."""

    items: list[PageItem]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


class MapPoint(BaseModel):
    id: str
    x: float
    y: float
    metadata: dict[str, Any]


class MapQuery(BaseModel):
    x: float
    y: float


class CollectionMap(BaseModel):
    """GET /collections/{name}/map: a 2-D PCA of (a sample of) the collection's vectors."""

    collection: str
    count: int = Field(description="items in the collection")
    sampled: int = Field(description="items placed: all, or `limit` spread evenly")
    explained_variance: list[float] = Field(
        description="share of the sample's variance along each axis"
    )
    mean: list[float] = Field(description="the sample's mean vector")
    components: list[list[float]] = Field(
        description="two unit axes; a vector v lands at ((v - mean)·a0, (v - mean)·a1)"
    )
    points: list[MapPoint]
    query: MapQuery | None = Field(default=None, description="where `vector` lands, if given")
