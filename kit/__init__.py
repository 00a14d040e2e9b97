"""Small stdlib-only helpers shared by pipeline/, checks/, provision/ and the image build scripts.

Nothing here imports torch, transformers or pyinfra: every part of the kit (and a bare image build stage) can use it.
"""
