"""From per-frame matches to door decisions: k of the last n frames, a time window, a cooldown.

One good frame never opens the door; k accepted frames of the same person
within the last n frames (and ``window_seconds``) do, once per cooldown.
Faces that keep failing to match become one UNKNOWN decision per visit, and
an empty scene after a visit becomes one NO_FACE decision.  Faces a face check
judged a presentation attack never vote, block any grant while they are in the
window (a photo that scores "live" in a lucky frame or two does not open the
door beside the frames where it was caught), and become one SPOOF decision.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from .types import Decision, Match, Outcome, Verdict


@dataclass(frozen=True)
class _Observation:
    timestamp: float
    frame_index: int
    person_id: int | None  # accepted identity, if any
    name: str | None
    distance: float | None
    has_face: bool
    refusal: Verdict | None = None  # no face accepted and a face check turned one down
    attack: bool = False  # a face in this frame was judged a presentation attack


class Decider:
    def __init__(self, frames_required: int = 3, window_frames: int = 5, window_seconds: float = 3.0,
                 cooldown_seconds: float = 10.0, model_id: str = "") -> None:
        if frames_required > window_frames:
            raise ValueError("frames_required cannot exceed window_frames")
        self.k = frames_required
        self.n = window_frames
        self.window_seconds = window_seconds
        self.cooldown_seconds = cooldown_seconds
        self.model_id = model_id
        self._history: collections.deque[_Observation] = collections.deque(maxlen=window_frames)
        self._last_grant: dict[int, float] = {}
        self._unknown_reported = False
        self._empty_streak = 0
        self._empty_reported = False

    def reconfigure(self, frames_required: int, window_frames: int, window_seconds: float,
                    cooldown_seconds: float) -> None:
        """New k/n/window/cooldown (a config reload), keeping the recent frames and the cooldowns running."""
        if frames_required > window_frames:
            raise ValueError("frames_required cannot exceed window_frames")
        self.k, self.n = frames_required, window_frames
        self.window_seconds, self.cooldown_seconds = window_seconds, cooldown_seconds
        self._history = collections.deque(self._history, maxlen=window_frames)

    def revoke(self, person_id: int) -> None:
        """Forget a grant that a later check (two-stage confirmation) turned down, so its cooldown does not block."""
        self._last_grant.pop(person_id, None)

    @staticmethod
    def _best(matches: list[Match]) -> Match | None:
        accepted = [m for m in matches if m.accepted]
        pool = accepted or matches
        return min(pool, key=lambda m: m.distance) if pool else None

    def update(self, frame_index: int, timestamp: float, matches: list[Match],
               refusals: list[Verdict] | tuple[Verdict, ...] = ()) -> Decision | None:
        """``refusals``: verdicts of faces a face check turned down in this frame (never matched)."""
        best = self._best(matches)
        accepted = best is not None and best.accepted
        attacks = [v for v in refusals if v.attack]
        observation = _Observation(
            timestamp=timestamp,
            frame_index=frame_index,
            person_id=best.person_id if accepted else None,
            name=best.name if accepted else None,
            distance=None if best is None or best.distance == float("inf") else best.distance,
            has_face=best is not None or bool(refusals),
            refusal=(attacks or list(refusals))[0] if refusals and not accepted else None,
            attack=bool(attacks),
        )
        self._history.append(observation)
        while self._history and timestamp - self._history[0].timestamp > self.window_seconds:
            self._history.popleft()
        recent = list(self._history)

        if not observation.has_face:
            self._empty_streak += 1
            if self._empty_streak >= self.n and not self._empty_reported:
                self._empty_reported = True
                self._unknown_reported = False
                return Decision(Outcome.NO_FACE, timestamp, frame_index, frames=self._empty_streak,
                                window=self.n, model=self.model_id)
            return None
        self._empty_streak = 0
        self._empty_reported = False

        if observation.person_id is not None:
            votes = [o for o in recent if o.person_id == observation.person_id]
            if len(votes) >= self.k and not any(o.attack for o in recent):
                last = self._last_grant.get(observation.person_id)
                if last is not None and timestamp - last < self.cooldown_seconds:
                    return None
                self._last_grant[observation.person_id] = timestamp
                self._history.clear()
                self._unknown_reported = True  # the visitor is known: no UNKNOWN for this visit
                return Decision(
                    Outcome.GRANTED, timestamp, frame_index, name=observation.name,
                    person_id=observation.person_id, distance=min(o.distance for o in votes),
                    frames=len(votes), window=len(recent), model=self.model_id,
                )
            return None

        refused = [o for o in recent if o.refusal is not None]
        if len(refused) >= self.k and not self._unknown_reported:
            # A refusal (an attack above all) is worth more than "unknown": it is this visit's one decision.
            self._unknown_reported = True
            attacks = [o for o in refused if o.refusal.attack]
            verdict = (attacks or refused)[-1].refusal
            return Decision(Outcome.SPOOF if attacks else Outcome.REFUSED, timestamp, frame_index,
                            frames=len(attacks or refused), window=len(recent), model=self.model_id,
                            check=verdict.check, reason=verdict.reason, score=verdict.score)
        rejected = [o for o in recent if o.has_face and o.person_id is None and o.refusal is None]
        if len(rejected) >= self.k and not self._unknown_reported:
            self._unknown_reported = True
            distances = [o.distance for o in rejected if o.distance is not None]
            return Decision(
                Outcome.UNKNOWN, timestamp, frame_index, distance=min(distances) if distances else None,
                frames=len(rejected), window=len(recent), model=self.model_id,
            )
        return None


class AttackAlarm:
    """Repeated presentation attacks: ``count`` SPOOF decisions within ``window_seconds`` raise an alert.

    One attack is someone trying a photo once; several in a few minutes are someone working at the door.
    After an alert the count starts again, so a sustained attempt alerts once per ``count`` attacks.
    """

    def __init__(self, count: int = 3, window_seconds: float = 300.0) -> None:
        self.count = count
        self.window_seconds = window_seconds
        self._times: collections.deque[float] = collections.deque()

    def observe(self, timestamp: float) -> bool:
        """Record one attack; True when it completes ``count`` attacks within the window."""
        self._times.append(timestamp)
        while self._times and timestamp - self._times[0] > self.window_seconds:
            self._times.popleft()
        if len(self._times) >= self.count:
            self._times.clear()
            return True
        return False
