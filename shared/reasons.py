"""Every error code in plain words: one table for the web page and the CLI alike.

The server's own message (which names the file and the limit) is always shown beside the
sentence; the sentence says what the code means to someone who has never seen it.
"""

from __future__ import annotations

SENTENCES: dict[str, str] = {
    "empty_file": "The file is empty.",
    "not_an_image": "This file is not an image.",
    "unsupported_format": "This format is not supported: documents and drawings (PDF, SVG) "
                          "are not converted.",
    "corrupt_image": "The image is damaged or incomplete, so it cannot be decoded.",
    "invalid_dimensions": "The image claims to have no width or no height.",
    "too_many_pixels": "The image has more pixels than this server accepts.",
    "file_too_large": "The file is larger than this server accepts.",
    "storage_unavailable": "Storage could not be reached. Retrying may help.",
    "internal_error": "Processing failed on the server. Retrying may help.",
    "corrupt_archive": "The archive, or this entry of it, is damaged and cannot be read; "
                       "the archive's other files are processed.",
    "unsupported_entry": "This archive entry is not a regular file (a link, a device, "
                         "encrypted, or compressed in a way this server does not read).",
    "unsafe_path": "This archive entry's path points outside the archive.",
    "archive_limit": "The archive went past a limit of this server (size unpacked, number "
                     "of files or time), so its remaining files were not read.",
    "ingest_failed": "The server could not finish reading this job's archives or folders; "
                     "the files it had read are processed.",
    "source_missing": "The uploaded file is no longer in storage.",
    "no_files": "Choose at least one file.",
    "queue_full": "Too much work is queued for this API key or this server. Try again in a "
                  "little while.",
    "too_many_items": "The request holds more files than this API key may have waiting; "
                      "send it in parts.",
    "unavailable": "The server cannot reach its job store right now.",
    "missing_api_key": "This server needs an API key.",
    "invalid_api_key": "The server did not accept this API key.",
    "forbidden": "Without API keys this server only serves its own machine.",
    "not_found": "Not found: it may have expired, or belong to another API key.",
    "network_error": "The server could not be reached.",
}

UNKNOWN = "Something went wrong."


def describe(code: str) -> str:
    return SENTENCES.get(code, UNKNOWN)


def in_words(error: dict[str, str] | None) -> str:
    """One line for a terminal: the sentence, then the server's message and code."""
    if not error:
        return "no reason was recorded"
    return f"{describe(error.get('code', ''))} ({error.get('code')}: {error.get('message')})"
