"""Live enrollment takes what the frame loop made of a face: no second alignment or embedding, no refused face."""

from __future__ import annotations

import numpy as np

from edge.config import config_from_dict
from edge.enrollment.live import start_session
from edge.gallery import Gallery
from edge.images import load_image
from edge.matcher import Matcher
from edge.pipeline import analyse_frame
from edge.types import Frame, Verdict

from .conftest import FIXTURES


class Counting:
    """The real embedder, counting calls."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.model_id, self.legacy_model_id = inner.model_id, inner.legacy_model_id
        self.input_size, self.embedding_size = inner.input_size, inner.embedding_size

    def embed(self, crops):
        self.calls += 1
        return self.inner.embed(crops)

    def embed_one(self, crop):
        return self.embed([crop])[0]


def frame_of(path, index=0):
    image = load_image(path)
    return Frame(index, float(index), image, image)


def session(tmp_path, embedder):
    config = config_from_dict({"state_dir": str(tmp_path), "enrollment": {"min_sample_interval": 0.0,
                                                                           "min_sample_distance": 0.0}})
    gallery = Gallery(tmp_path / "g.db")
    return gallery, start_session(gallery, "Ada", 2, config, embedder, 1.1)


def test_a_live_sample_reuses_the_loops_crop_and_embedding(tmp_path, detector, embedder):
    counting = Counting(embedder)
    gallery, live = session(tmp_path, counting)
    matcher = Matcher(gallery, embedder.model_id, 1.1)
    result = analyse_frame(frame_of(FIXTURES / "person_a_1.jpg"), detector, counting, matcher)
    assert counting.calls == 1 and len(result.crops) == 1
    events = live.offer(result.frame.main, result.faces, 0.0, crops=result.crops, embeddings=result.embeddings)
    assert [e["event"] for e in events] == ["accepted"] and counting.calls == 1  # nothing embedded twice
    np.testing.assert_array_equal(live.samples[0].embedding, result.embeddings[0])
    assert live.samples[0].crop is result.crops[0]
    # Without what the loop made, the session embeds the face itself - and gets the same vector.
    again = live.offer(result.frame.main, result.faces, 1.0)
    assert counting.calls == 2 and [e["event"] for e in again] != ["error"]
    gallery.close()


def test_a_face_a_check_refused_is_never_a_sample(tmp_path, detector, embedder):
    gallery, live = session(tmp_path, embedder)
    frame = frame_of(FIXTURES / "person_a_1.jpg")
    face = detector.detect(frame)[0]
    events = live.offer(frame.main, [], 0.0, refused=[(face, Verdict("liveness", False, 0.01, "screen"))])
    assert live.samples == [] and events[0]["event"] == "rejected"
    reason = events[0]["reasons"][0]
    assert reason["code"] == "refused" and "liveness check turned the face down (screen)" in reason["message"]
    gallery.close()
