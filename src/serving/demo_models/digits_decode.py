"""digits_decode: image files (PNG, JPEG, ...; any size, RGB or grayscale) to the 64 features of
scikit-learn's digits: gray, 8x8, ink as 1.0 and paper as 0.0 (the dataset's 0..16, scaled)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving import ROW_ERRORS, InvalidInput, ModelContext

Array = np.ndarray[Any, Any]


class Model:
    def __init__(self, context: ModelContext) -> None:
        self.side = int(context.parameters.get("side", 8))
        self.max_pixels = int(context.parameters.get("max_pixels", 4096 * 4096))

    def predict(self, inputs: dict[str, Array]) -> dict[str, Any]:
        images = inputs["image"].reshape(-1)
        pixels = np.zeros((len(images), self.side * self.side), dtype=np.float32)
        errors: list[str | None] = [None] * len(images)
        for i, data in enumerate(images):
            try:
                pixels[i] = self._features(data)
            except InvalidInput as exc:
                errors[i] = exc.message  # this row fails alone; the others of the batch are answered
        return {"pixels": pixels, ROW_ERRORS: errors}

    def _features(self, data: bytes) -> Array:
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > self.max_pixels:
                    raise InvalidInput(f"image is {img.width}x{img.height}; at most {self.max_pixels} pixels")
                gray = img.convert("L").resize((self.side, self.side), Image.Resampling.BOX)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InvalidInput(f"not an image this server can decode ({type(exc).__name__})") from None
        return (255.0 - np.asarray(gray, dtype=np.float32).reshape(-1)) / 255.0
