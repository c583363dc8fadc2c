"""The app's page scripts (run by ``app.py``'s ``st.navigation``) and their shared widgets.

A regular package (not a namespace one) so ``from pages import widgets`` resolves the same way
whatever the process's ``sys.path`` holds.
"""
