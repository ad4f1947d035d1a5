"""Text prompts on the default model: a concept head on the frozen LiteMedSAM image embedding.

``vocabulary`` (concepts, synonyms, text → concept), ``embeddings`` (encode dataset splits once, cache on disk),
``head`` (the network), ``train`` (the ``type: concepts`` training phase), ``detect`` (head outputs → boxes →
LiteMedSAM mask decoder → instances), ``cli`` (``oncoseg concepts``). See docs/concepts.md.
"""
