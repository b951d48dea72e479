"""What RunDLModel shows in CellProfiler's window.

:mod:`dlmodel.gui.cards` is plain Python (the catalogue's cards as HTML, cover thumbnails,
downloads that can be cancelled); :mod:`dlmodel.gui.chooser` is the *Choose a model…* dialog
and imports wx, so only the button that opens it imports it: importing ``dlmodel`` (or this
package) never imports wx.
"""
