"""What a review is: manifest, repository packing, agents and prompts, findings, reports."""

from __future__ import annotations
