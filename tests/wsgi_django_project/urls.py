from django.urls import path

from . import views

urlpatterns = [
    path("echo-form/", views.echo_form),
    path("upload/", views.upload),
    path("stream/", views.stream),
    path("download/", views.download),
    path("set-cookie/", views.set_cookie),
    path("show-cookies/", views.show_cookies),
    path("redirect/", views.redirect_view),
    path("landing/", views.landing),
    path("csrf-form/", views.csrf_form),
]
