"""Command-line tools that need several floors (auth + providers): one floor above them.

`python -m auth ...` is the command's name; auth/__main__.py only hands over to cli.accounts,
so nothing inside auth/ ever imports providers/ or addons/.
"""
